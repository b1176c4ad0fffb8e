"""oneDNN products against XLA's dot: values and gradients, float32 and bfloat16, transposed
weights, and the model's matmul switch (auto picks oneDNN for bfloat16 on CPU where oneDNN has a
bfloat16 matmul, never under a mesh). What a CPU without AVX-512 does is tested on every CPU by
hiding the features (YARN_JAX_HIDE_CPU_FEATURES, in a fresh process)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from yarn_jax import model as model_lib
from yarn_jax import onednn, sharding

pytestmark = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN: {onednn.unavailable_reason()}")
needs_bf16 = pytest.mark.skipif(bool(onednn.unsupported(jnp.bfloat16)), reason=onednn.unsupported(jnp.bfloat16))


def _parametrize_dtypes():
    return pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-6), pytest.param(jnp.bfloat16, 1e-2, marks=needs_bf16)])


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@_parametrize_dtypes()
@pytest.mark.parametrize("transpose_w", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 16), (3, 37, 64), (2, 130, 96)])
def test_values_and_gradients_equal_xla(dtype, tol, transpose_w, shape):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape), dtype)
    w = jnp.asarray(rng.normal(size=(48, shape[-1]) if transpose_w else (shape[-1], 48)), dtype)
    got = onednn.matmul(x, w, transpose_w=transpose_w)
    want = onednn.reference(x, w, transpose_w=transpose_w)
    assert got.dtype == dtype and got.shape == shape[:-1] + (48,)
    assert _relative(got, want) < tol

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w, transpose_w=transpose_w, out_dtype=jnp.float32)))

    ours = jax.grad(loss(onednn.matmul), (0, 1))(x, w)
    theirs = jax.grad(loss(onednn.reference), (0, 1))(x, w)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype and _relative(a, b) < 4 * tol


def _tiny(**fields):
    config = model_lib.ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                   num_kv_heads=2, tie_word_embeddings=True, **fields)
    return model_lib.Decoder(config, rngs=nnx.Rngs(0))


@needs_bf16
def test_a_bfloat16_model_through_onednn_matches_xla():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 40)))
    xla = _tiny(dtype="bfloat16", param_dtype="bfloat16", matmul="xla")
    ours = model_lib.with_config(xla, xla.config.replace(matmul="onednn"))
    assert _relative(ours(ids), xla(ids)) < 2e-2
    f32 = model_lib.with_config(xla, xla.config.replace(matmul="onednn", dtype="float32", param_dtype="float32"))
    assert _relative(f32(ids), xla(ids)) < 2e-2


def test_auto_means_onednn_for_bfloat16_only_where_it_runs_and_never_under_a_mesh():
    assert model_lib.uses_onednn("auto", jnp.bfloat16) == (not onednn.unsupported(jnp.bfloat16))
    assert not model_lib.uses_onednn("auto", jnp.float32)
    assert model_lib.uses_onednn("onednn", jnp.float32) and not model_lib.uses_onednn("xla", jnp.bfloat16)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1, "context": 1})
    with sharding.activation_sharding(mesh):
        assert not model_lib.uses_onednn("auto", jnp.bfloat16)


def test_float32_products_run_on_every_cpu():
    assert onednn.unsupported(jnp.float32) == ""


_WITHOUT_AVX512 = textwrap.dedent("""
    import jax.numpy as jnp, numpy as np
    from flax import nnx
    from yarn_jax import cpu_build, model as model_lib, onednn
    assert "avx512f" not in cpu_build.features() and not cpu_build.native_bfloat16()
    assert "no bfloat16 matmul for this CPU" in onednn.unsupported(jnp.bfloat16), onednn.unsupported(jnp.bfloat16)
    assert onednn.unsupported(jnp.float32) == ""
    config = model_lib.ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                                   num_kv_heads=2, tie_word_embeddings=True, dtype="bfloat16", param_dtype="bfloat16")
    auto = model_lib.Decoder(config, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 97, (2, 40)))
    assert not model_lib.uses_onednn("auto", jnp.bfloat16)
    xla = model_lib.with_config(auto, config.replace(matmul="xla"))
    np.testing.assert_array_equal(auto(ids), xla(ids))  # auto took XLA's dot
    try:
        model_lib.with_config(auto, config.replace(matmul="onednn"))(ids)
    except ValueError as error:
        print("REFUSED", error)
""")


def test_without_avx512_auto_takes_xla_and_an_explicit_request_is_refused_in_one_line():
    """Acts as an AVX2-only CPU on any machine: oneDNN capped below AVX-512 has no bfloat16 matmul."""
    env = dict(os.environ, YARN_JAX_HIDE_CPU_FEATURES="avx512f", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_AVX512], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    refused = next(line for line in done.stdout.splitlines() if line.startswith("REFUSED"))
    assert "matmul='onednn' cannot run bfloat16 here: oneDNN has no bfloat16 matmul for this CPU (AVX2, no AVX-512" in refused
    assert "Use 'xla' or 'auto'." in refused
