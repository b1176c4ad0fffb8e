"""Attention kernels: chunked (and the accelerator kernels' plumbing) against the dense reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yarn_jax import attention as attention_lib


def _inputs(seed, b=2, t=100, h=4, k=2, d=16):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    kk = jnp.asarray(rng.standard_normal((b, t, k, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, t, k, d)), jnp.float32)
    segments = jnp.asarray(np.sort(rng.integers(0, 3, (b, t)), axis=1), jnp.int32)
    return q, kk, v, segments


def _loss(implementation, **kwargs):
    # A non-linear read-out so every output element gets a distinct cotangent.
    return lambda q, k, v: jnp.sum(jnp.sin(attention_lib.attention(q, k, v, implementation=implementation, **kwargs)))


CASES = [  # (heads, kv_heads, window, packed, block_size): MHA/GQA/MQA, windows, segments, block sizes
    (4, 4, None, False, 16), (4, 2, None, True, 16), (4, 1, None, False, 48), (4, 2, 17, False, 16),
    (4, 2, 17, True, 48), (4, 1, 17, True, 16), (4, 4, 33, True, 128), (4, 2, None, True, 128),
]


@pytest.mark.parametrize("heads, kv_heads, window, packed, block_size", CASES)
def test_chunked_equals_dense_values_and_gradients(heads, kv_heads, window, packed, block_size):
    q, k, v, segments = _inputs(heads * 10 + kv_heads, h=heads, k=kv_heads)
    kwargs = dict(sliding_window=window, segment_ids=segments if packed else None)
    dense = attention_lib.attention(q, k, v, implementation="xla", **kwargs)
    chunked = attention_lib.attention(q, k, v, implementation="chunked", block_size=block_size, **kwargs)
    np.testing.assert_allclose(chunked, dense, atol=1e-5, rtol=1e-5)
    dense_grads = jax.grad(_loss("xla", **kwargs), argnums=(0, 1, 2))(q, k, v)
    chunked_grads = jax.grad(_loss("chunked", block_size=block_size, **kwargs), argnums=(0, 1, 2))(q, k, v)
    for name, got, want in zip("qkv", chunked_grads, dense_grads):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


def test_packed_documents_do_not_attend_across_each_other():
    q, k, v, _ = _inputs(0, b=1, t=40)
    segments = jnp.asarray([[0] * 20 + [1] * 20])
    packed = attention_lib.attention(q, k, v, segment_ids=segments, implementation="chunked", block_size=16)
    alone = attention_lib.attention(q[:, 20:], k[:, 20:], v[:, 20:], implementation="chunked", block_size=16)
    np.testing.assert_allclose(packed[:, 20:], alone, atol=1e-5)


def test_chunked_memory_grows_linearly_where_dense_grows_quadratically():
    """XLA's own accounting of temporaries for forward+backward (no timing, no running)."""
    def temp_bytes(implementation, t):
        q = jax.ShapeDtypeStruct((1, t, 4, 32), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, t, 2, 32), jnp.float32)
        step = jax.jit(jax.grad(lambda q, k, v: attention_lib.attention(
            q, k, v, implementation=implementation, block_size=256).sum(), argnums=(0, 1, 2)))
        return step.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("chunked", 4096) < 4 * temp_bytes("chunked", 1024)  # linear or better
    assert temp_bytes("xla", 4096) > 10 * temp_bytes("xla", 1024)  # the [T, T] logits


def test_cudnn_call_arguments_match_the_reference():
    """The cudnn path's mask/window/GQA arguments, run through the same jax call on CPU."""
    q, k, v, segments = _inputs(3, t=64)
    for window in (None, 9):
        expected = attention_lib.attention(q, k, v, segment_ids=segments, sliding_window=window)
        got = attention_lib.cudnn_attention(q, k, v, segments, window, None, implementation="xla")
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_splash_kernel_in_interpret_mode_matches_the_reference():
    q, k, v, segments = _inputs(4, b=1, t=256, d=32)
    for window in (None, 40):
        expected = attention_lib.attention(q, k, v, segment_ids=segments, sliding_window=window)
        got = attention_lib.splash_attention(q, k, v, segments, window, None, interpret=True, block_size=128)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("implementation", ["cudnn", "splash"])
def test_accelerator_kernels_refuse_the_cpu_instead_of_falling_back(implementation):
    q, k, v, _ = _inputs(5, t=8)
    with pytest.raises(ValueError, match=f"attention='{implementation}' needs a"):
        attention_lib.attention(q, k, v, implementation=implementation)


def test_auto_falls_back_on_cpu_and_unknown_names_are_refused():
    assert attention_lib.resolve_implementation("auto", 128) == "xla"
    assert attention_lib.resolve_implementation("auto", 8192) == "chunked"
    with pytest.raises(ValueError, match="attention: must be one of"):
        attention_lib.resolve_implementation("flash", 128)


def test_gqa_head_count_is_validated():
    q = jnp.zeros((1, 4, 6, 8))
    k = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="must divide"):
        attention_lib.attention(q, k, k)
