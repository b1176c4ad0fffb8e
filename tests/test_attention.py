"""Attention kernels: chunked, flash_cpu (and the accelerator kernels' plumbing) against the dense reference."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yarn_jax import attention as attention_lib
from yarn_jax import accelerators, cpu_build, flash_cpu


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


def _assert_equals_dense(implementation, q, k, v, **kwargs):
    dense = attention_lib.attention(q, k, v, implementation="xla", **kwargs)
    got = attention_lib.attention(q, k, v, implementation=implementation, **kwargs)
    np.testing.assert_allclose(got, dense, atol=1e-5, rtol=1e-5)
    dense_grads = jax.grad(_loss("xla", **kwargs), argnums=(0, 1, 2))(q, k, v)
    grads = jax.grad(_loss(implementation, **kwargs), argnums=(0, 1, 2))(q, k, v)
    for name, got, want in zip("qkv", grads, dense_grads):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("heads, kv_heads, window, packed, block_size", CASES)
def test_chunked_equals_dense_values_and_gradients(heads, kv_heads, window, packed, block_size):
    q, k, v, segments = _inputs(heads * 10 + kv_heads, h=heads, k=kv_heads)
    _assert_equals_dense("chunked", q, k, v, sliding_window=window, segment_ids=segments if packed else None,
                         block_size=block_size)


needs_flash_cpu = pytest.mark.skipif(not flash_cpu.available(), reason=f"flash_cpu: {flash_cpu.unavailable_reason()}")

# The kernel's tiles are 64 tokens: lengths below, at and across tile edges (the last tile partial),
# head dims 16..128, MHA/GQA/MQA, windows shorter and longer than a tile, packed documents (with
# whole single-document tiles, which skip the per-element mask), batch > 1.
FLASH_CASES = [  # (batch, length, heads, kv_heads, head_dim, window, packed)
    (2, 100, 4, 4, 16, None, False), (2, 100, 4, 2, 32, None, True), (1, 64, 4, 1, 64, None, False),
    (1, 300, 6, 3, 64, None, True), (1, 300, 4, 2, 64, 70, False), (2, 129, 2, 1, 128, 17, True),
    (1, 1, 2, 2, 16, None, False), (1, 200, 8, 2, 48, 200, True),
]


@needs_flash_cpu
@pytest.mark.parametrize("b, t, heads, kv_heads, d, window, packed", FLASH_CASES)
def test_flash_cpu_equals_dense_values_and_gradients(b, t, heads, kv_heads, d, window, packed):
    q, k, v, segments = _inputs(t + d, b=b, t=t, h=heads, k=kv_heads, d=d)
    _assert_equals_dense("flash_cpu", q, k, v, sliding_window=window, segment_ids=segments if packed else None)


@needs_flash_cpu
def test_flash_cpu_takes_16_bit_inputs_and_computes_in_float32():
    q, k, v, segments = _inputs(7, t=80, d=32)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    got = attention_lib.attention(q16, k16, v16, segment_ids=segments, implementation="flash_cpu")
    want = attention_lib.attention(*(x.astype(jnp.float32) for x in (q16, k16, v16)), segment_ids=segments)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=1e-2)


needs_native_bf16 = pytest.mark.skipif(not (flash_cpu.available() and flash_cpu.native_bf16()),
                                       reason="flash_cpu has no native bfloat16 path here (needs AMX)")

# The native bf16 forward: 16-row AMX blocks (lengths and stacked GQA rows off that grid), head dims
# padded to the 32-deep tile products (16, 48, 80) or split over several 64-column passes (128).
BF16_CASES = [  # (batch, length, heads, kv_heads, head_dim, window, packed, logit gain)
    (2, 100, 4, 4, 16, None, False, 1), (1, 300, 9, 3, 64, None, True, 1), (1, 300, 9, 3, 64, 70, False, 1),
    (2, 129, 2, 1, 128, 17, True, 1), (1, 200, 8, 2, 48, 200, True, 1), (1, 130, 6, 2, 80, None, False, 1),
    (1, 1, 2, 2, 16, None, False, 1), (1, 700, 9, 3, 64, None, False, 4),
]


@needs_native_bf16
@pytest.mark.parametrize("b, t, heads, kv_heads, d, window, packed, gain", BF16_CASES)
def test_flash_cpu_native_bf16_equals_dense_float32_on_the_same_inputs(b, t, heads, kv_heads, d, window, packed,
                                                                       gain):
    """Within bf16's rounding of the output (up to 2^-8 relative) plus that of P for P V, as
    PyTorch's bf16 kernel; gain > 1 sharpens the softmax (a dominant key's weight is then exact
    only where the running max is exactly that key's score)."""
    q, k, v, segments = _inputs(t + d, b=b, t=t, h=heads, k=kv_heads, d=d)
    q16, k16, v16 = ((x * s).astype(jnp.bfloat16) for x, s in ((q, gain), (k, 1), (v, 1)))
    kwargs = dict(sliding_window=window, segment_ids=segments if packed else None)
    got = attention_lib.attention(q16, k16, v16, implementation="flash_cpu", **kwargs)
    want = attention_lib.attention(*(x.astype(jnp.float32) for x in (q16, k16, v16)), implementation="xla", **kwargs)
    assert got.dtype == jnp.bfloat16
    error = jnp.abs(got.astype(jnp.float32) - want)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=4e-3, rtol=8e-3)
    assert float(error.mean()) < 1e-3
    # Gradients: the float32 backward from bf16 residuals (the bf16 output enters rowsum(dO * O),
    # whose error sharp softmaxes amplify), rounded to bf16.
    grads = jax.grad(_loss("flash_cpu", **kwargs), argnums=(0, 1, 2))(q16, k16, v16)
    dense = jax.grad(_loss("xla", **kwargs), argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q16, k16, v16)))
    for name, g, w in zip("qkv", grads, dense):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(g.astype(jnp.float32), w, rtol=2e-2, atol=5e-3 * float(jnp.abs(w).max()),
                                   err_msg=f"d{name}")


needs_cached_kernel = pytest.mark.skipif(not (flash_cpu.available() and flash_cpu.cached_available()),
                                         reason="flash_cpu has no cached forward here (needs AVX-512)")


@needs_cached_kernel
@pytest.mark.parametrize("cache_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("offset, t, kv_heads, d, window", [
    (0, 130, 2, 32, None), (70, 37, 2, 16, None), (64, 64, 1, 64, None), (200, 1, 4, 16, None),
    (150, 100, 2, 32, 50), (5, 250, 1, 48, 64),
])
def test_flash_cpu_cached_attention_equals_dense_cached_attention(cache_dtype, offset, t, kv_heads, d, window):
    """Chunked prefill's kernel: a chunk's queries at positions offset.. against a heads-first KV cache
    holding every slot up to the chunk's last, read in place in its own dtype. Query tiles that start
    off the 64-key tile grid, chunks of one token, windows and GQA/MQA; slots past the chunk hold NaN,
    which the kernel must never read (the dense reference sees zeros there)."""
    b, h, size = 2, 4, 320
    rng = np.random.default_rng(offset + t)
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32)
    cache_k, cache_v = (jnp.asarray(rng.standard_normal((b * kv_heads, size, d)), cache_dtype) for _ in "kv")
    end = offset + t
    unwritten = lambda x, fill: x.at[:, end:].set(fill)  # noqa: E731
    got = attention_lib.cached_attention(q, unwritten(cache_k, np.nan), unwritten(cache_v, np.nan), jnp.int32(offset),
                                         window=window, implementation="flash_cpu")
    want = attention_lib.cached_attention(q, unwritten(cache_k, 0).astype(jnp.float32),
                                          unwritten(cache_v, 0).astype(jnp.float32), offset, window=window)
    assert got.dtype == jnp.float32 and got.shape == q.shape
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@needs_flash_cpu
def test_flash_cpu_without_native_bf16_casts_to_float32(monkeypatch):
    q, k, v, segments = _inputs(9, t=150, h=6, k=2, d=32)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    monkeypatch.setattr(flash_cpu, "native_bf16", lambda: False)
    got = flash_cpu.flash_attention(q16, k16, v16, segments, sliding_window=40)
    want = flash_cpu.flash_attention(*(x.astype(jnp.float32) for x in (q16, k16, v16)), segments, sliding_window=40)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(got, want.astype(jnp.bfloat16))


def test_flash_cpu_refuses_what_it_cannot_run(monkeypatch):
    q, k, v, _ = _inputs(8, t=8, d=8)
    if flash_cpu.available():
        with pytest.raises(ValueError, match="head dim divisible by 16; got 8"):
            attention_lib.attention(q, k, v, implementation="flash_cpu")
        assert attention_lib.resolve_implementation("auto", 128, head_dim=8) == "xla"
    monkeypatch.setattr(flash_cpu, "_load", lambda: (False, "no C++ compiler found (set $CXX or install g++)"))
    with pytest.raises(ValueError, match="attention='flash_cpu' cannot run this step: no C\\+\\+ compiler"):
        attention_lib.attention(q, k, v, implementation="flash_cpu")
    assert attention_lib.resolve_implementation("auto", 8192) == "chunked"


def test_flash_cpu_build_is_cached_by_source_and_machine(tmp_path, monkeypatch):
    compiler = cpu_build.compiler()
    if compiler is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("YARN_JAX_CACHE_DIR", str(tmp_path))
    first = flash_cpu._build(compiler)
    stamp = first.stat().st_mtime_ns
    assert flash_cpu._build(compiler) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


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
        got = accelerators.cudnn_attention(q, k, v, segments, window, None, implementation="xla")
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_splash_kernel_in_interpret_mode_matches_the_reference():
    q, k, v, segments = _inputs(4, b=1, t=256, d=32)
    for window in (None, 40):
        expected = attention_lib.attention(q, k, v, segment_ids=segments, sliding_window=window)
        got = accelerators.splash_attention(q, k, v, segments, window, None, interpret=True, block_size=128)
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("implementation", ["cudnn", "splash"])
def test_accelerator_kernels_refuse_the_cpu_instead_of_falling_back(implementation):
    q, k, v, _ = _inputs(5, t=8)
    platform = {"cudnn": "GPU", "splash": "TPU"}[implementation]
    with pytest.raises(ValueError, match=f"attention='{implementation}' cannot run this step: it runs on {platform}; "
                                         "this step is compiled for 'cpu'. Kernels that can: xla, chunked"):
        attention_lib.attention(q, k, v, implementation=implementation)


def test_auto_picks_flash_cpu_else_falls_back_and_unknown_names_are_refused(monkeypatch):
    if flash_cpu.available():
        assert attention_lib.resolve_implementation("auto", 128) == "flash_cpu"
    monkeypatch.setattr(flash_cpu, "unavailable_reason", lambda: "disabled by YARN_JAX_FLASH_CPU=0")
    assert attention_lib.resolve_implementation("auto", 128) == "xla"
    assert attention_lib.resolve_implementation("auto", 8192) == "chunked"
    with pytest.raises(ValueError, match="attention: must be one of"):
        attention_lib.resolve_implementation("flash", 128)


def test_gqa_head_count_is_validated():
    q = jnp.zeros((1, 4, 6, 8))
    k = jnp.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="must divide"):
        attention_lib.attention(q, k, k)


_SPLASH_ON_A_MESH = """
import jax, jax.numpy as jnp, numpy as np
from yarn_jax import accelerators, attention, sharding
mesh = sharding.make_mesh({"data": 2, "tensor": 2, "context": 2})
rng = np.random.default_rng(0)
q = jnp.asarray(rng.standard_normal((2, 256, 4, 32)), jnp.float32)
k, v = (jnp.asarray(rng.standard_normal((2, 256, 2, 32)), jnp.float32) for _ in "kv")
seg = jnp.asarray(np.sort(rng.integers(0, 3, (2, 256)), axis=1), jnp.int32)
axes = attention._mesh_axes(mesh, q, k, shards_sequence=True)
assert axes == ("data", "tensor", "context"), axes
splash = lambda q, k, v: accelerators.splash_attention(q, k, v, seg, 40, None, mesh=mesh, axes=axes, interpret=True,
                                                        block_size=128)
dense = lambda q, k, v: attention.attention(q, k, v, segment_ids=seg, sliding_window=40, implementation="xla")
np.testing.assert_allclose(jax.jit(splash)(q, k, v), dense(q, k, v), atol=1e-5)
loss = lambda f: (lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))))
for got, want in zip(jax.grad(loss(splash), (0, 1, 2))(q, k, v), jax.grad(loss(dense), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5)
print("OK")
"""


@pytest.mark.xdist_group("many_devices")
@pytest.mark.slow
def test_splash_on_a_mesh_splits_batch_heads_and_queries_and_equals_the_reference():
    """The mesh rule the TPU compile cannot check numerically: splash in shard_map over data (batch),
    tensor (whole GQA groups of heads) and context (each device a run of query blocks, its share of
    the kernel's mask information), in interpret mode on 8 CPU devices: values and gradients."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, "-c", _SPLASH_ON_A_MESH], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
