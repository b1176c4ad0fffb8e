"""Llama 2 7B, 4k -> 32k with NTK-aware scaling (s = 8): the baseline, same budget as yarn_32k.

    python -m yarn_jax.train --config configs/ntk_32k.py --config.init_from=/path/to/Llama-2-7b-hf
    python -m yarn_jax.train --config configs/ntk_32k.py:runlocal      # CPU-size, no checkpoint needed

init_from takes a local transformers directory (config.json + *.safetensors), a yarn_jax model
directory (python -m yarn_jax.convert hf-to-orbax) or another run's workdir. Data defaults to the
embedded corpus; the paper used PG19 (--config.data.source=tfds:pg19 where you have it prepared).

As written it fits a TPU v5p-8 (4 chips): `python -m yarn_jax.plan --config configs/ntk_32k.py --topology v5p-8`
plans 83.3 GiB of 95 per chip (batch 64 in 8 micro-batches; docs/accelerators.md has every slice).
"""

from yarn_jax import recipe


def get_config(arg=None):
    c = recipe.llama2_7b_extension(rope="ntk:factor=8", seq_len=32768, steps=400)
    c.name = "ntk_32k"
    if arg == "runlocal":
        recipe.runlocal(c)
    return c
