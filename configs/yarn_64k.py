"""Llama 2 7B, 4k -> 64k with YaRN (s = 16): the YaRN paper's main recipe (400 steps, batch 64, 64k-token
PG19 chunks).

    python -m yarn_jax.train --config configs/yarn_64k.py --config.init_from=/path/to/Llama-2-7b-hf
    python -m yarn_jax.train --config configs/yarn_64k.py:runlocal      # CPU-size, no checkpoint needed

init_from takes a local transformers directory (config.json + *.safetensors), a yarn_jax model
directory (python -m yarn_jax.convert hf-to-orbax) or another run's workdir. Data defaults to the
embedded corpus; the paper used PG19 (--config.data.source=tfds:pg19 where you have it prepared).

As written it fits a TPU v5p-8 (4 chips): `python -m yarn_jax.plan --config configs/yarn_64k.py --topology v5p-8`
plans 82.5 GiB of 95 per chip (batch 64 in 16 micro-batches; docs/accelerators.md has every slice).
"""

from yarn_jax import recipe


def get_config(arg=None):
    c = recipe.llama2_7b_extension(rope="yarn:factor=16,original_max_position_embeddings=4096", seq_len=65536, steps=400)
    c.name = "yarn_64k"
    if arg == "runlocal":
        recipe.runlocal(c)
    return c
