"""A small byte-level RoPE decoder pretrained from scratch on the embedded corpus (the Python
standard library's source) at a short length L = 256: the starting point of the CPU experiments.

    python -m yarn_jax.train --config configs/tiny_stdlib.py [--workdir runs/tiny_stdlib]
    python -m yarn_jax.train --config configs/tiny_stdlib.py:runlocal
"""

from yarn_jax import recipe


def get_config(arg=None):
    c = recipe.base_config()
    c.name = "tiny_stdlib"
    c.rope = "default"
    c.seq_len = 256
    c.batch_size = 16
    c.steps = 2000
    c.model.update(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=4,
                   attention="xla", remat="none")
    c.data.update(source="stdlib", tokenizer="byte", packing="concat")
    c.optimizer.update(lr=2e-3, warmup_steps=100, schedule="cosine", weight_decay=0.1)
    c.checkpoint.update(every=500, keep=2)
    c.eval.update(every=500, batches=8, lengths="512,1024")
    if arg == "runlocal":
        c.steps, c.batch_size = 30, 8
        c.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4)
        c.checkpoint.update(every=10)
        c.eval.update(every=15, batches=2, lengths="512")
        c.log_every = 5
    return c
