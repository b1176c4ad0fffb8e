"""Llama 2 7B, 64k -> 128k with YaRN (s = 32): 200 more steps from the yarn_64k run's checkpoint,
still on 64k-token data (YaRN paper §4.1).

    python -m yarn_jax.train --config configs/yarn_128k.py            # reads runs/yarn_64k
    python -m yarn_jax.train --config configs/yarn_128k.py:runlocal   # CPU-size, no checkpoint needed

As written it fits a TPU v5p-8 (4 chips): `python -m yarn_jax.plan --config configs/yarn_128k.py --topology v5p-8`
plans 82.5 GiB of 95 per chip (batch 64 in 16 micro-batches; docs/accelerators.md has every slice).
"""

from yarn_jax import recipe


def get_config(arg=None):
    c = recipe.llama2_7b_extension(rope="yarn:factor=32,original_max_position_embeddings=4096",
                                   seq_len=65536, steps=200)
    c.name = "yarn_128k"
    c.init_from = "runs/yarn_64k"
    if arg == "runlocal":
        recipe.runlocal(c, factor=16.0)
    return c
