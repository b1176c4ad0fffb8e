"""Fused causal attention for XLA's CPU backend: a C++ kernel (``csrc/flash_attention_cpu.cc``)
called through the XLA FFI, with the same masks and results as ``attention.chunked_attention``.

Why it exists: on CPU, XLA runs the pure-JAX blockwise kernel as one op per block product, so
every score tile of every (batch, head) leaves the cache between ops; the fused kernel keeps one
64-query tile (of all the query heads that share a kv head, with AVX-512) in cache from QK^T
through the online softmax to PV, and its backward recomputes each tile pair once for dQ, dK and
dV (FlashAttention-2). How it compares with ``chunked`` and PyTorch's CPU flash kernel:
experiments/benchmarks/results/bench.md (bench_attention.py; ``--forward-only`` for the forward alone).

Precision: float32 throughout, and 16-bit inputs are cast to float32, except that bfloat16
q/k/v on a CPU with AMX (and an OS that grants it, see ``native_bf16``) run a native bfloat16
forward: bf16 tile products with float32 accumulation and softmax, probabilities rounded to bf16
for P V, bf16 output -- the precision of PyTorch's bf16 kernel. Its backward casts to float32.

The kernel is compiled on first use with the machine's C++ compiler (``$CXX``, else g++ / c++ /
clang++) against the installed jaxlib's FFI headers, for this CPU (``-march=native``, less any
feature ``YARN_JAX_HIDE_CPU_FEATURES`` hides: ``cpu_build``), and cached
under ``$YARN_JAX_CACHE_DIR`` (default ``~/.cache/yarn_jax``) keyed by source, jaxlib version,
compiler and CPU. Without a compiler, ``available()`` is False, ``attention="auto"`` keeps using
``chunked``/``xla``, and an explicit ``attention="flash_cpu"`` raises with the reason.
``YARN_JAX_FLASH_CPU=0`` turns it off (e.g. to benchmark the pure-JAX kernels).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yarn_jax import cpu_build

SOURCE = Path(__file__).parent / "csrc" / "flash_attention_cpu.cc"
HEAD_DIM_MULTIPLE = 16  # the kernel's inner loops run over 16 floats at a time
_TARGETS = {"yarn_flash_attention_cpu_fwd": "YarnFlashAttentionForward",
            "yarn_flash_attention_cpu_fwd_bf16": "YarnFlashAttentionForwardBf16",
            "yarn_flash_attention_cpu_bwd": "YarnFlashAttentionBackward",
            "yarn_flash_attention_cpu_fwd_cached": "YarnFlashAttentionForwardCached"}
_lock = threading.Lock()
_library: list[ctypes.CDLL] = []  # the loaded kernel, once _load() succeeded


def _build(compiler: str) -> Path:
    """The compiled shared library (compiling it when the cache has none)."""
    import jaxlib

    flags = ["-O3", *cpu_build.march_flags(), "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}"]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jaxlib.__version__, compiler, *flags,
                                    cpu_build.cpu_fingerprint()]).encode()).hexdigest()[:16]
    return cpu_build.compile_cached(compiler, SOURCE, flags, f"flash_attention_cpu-{key}.so")


@functools.cache
def _load() -> tuple[bool, str]:
    """(available, reason): compiles, loads and registers the kernel once per process."""
    if os.environ.get("YARN_JAX_FLASH_CPU", "1") == "0":
        return False, "disabled by YARN_JAX_FLASH_CPU=0"
    compiler = cpu_build.compiler()
    if compiler is None:
        return False, "no C++ compiler found (set $CXX or install g++)"
    try:
        with _lock:
            library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
        for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        return False, f"could not build the kernel: {error}"
    _library.append(library)
    return True, ""


@functools.cache
def native_bf16() -> bool:
    """Whether bfloat16 inputs run the kernel's native bf16 forward: built for a CPU with AMX and
    AVX512-BF16, and the OS lent this process the AMX tile state (asked for here, once)."""
    return _load()[0] and bool(_library) and bool(_library[0].YarnFlashAttentionNativeBf16())


@functools.cache
def cached_available() -> bool:
    """Whether ``cached_attention`` runs here: the kernel's AVX-512 build (its AVX2 fallback has no
    cached forward)."""
    return _load()[0] and bool(_library) and bool(_library[0].YarnFlashAttentionCached())


def available() -> bool:
    """Whether the fused CPU kernel can run in this process (compiles it on the first call)."""
    return not unavailable_reason()


def unavailable_reason() -> str:
    return cpu_build.unavailable_reason(_load)


def supports(head_dim: int) -> bool:
    return head_dim % HEAD_DIM_MULTIPLE == 0


def flash_attention(q, k, v, segment_ids=None, sliding_window=None, scale=None):
    """Causal (grouped-query) attention: q [B, T, H, D], k and v [B, T, K, D]; equals
    ``attention.dense_attention``. Returns q's dtype; computes in float32, or natively in bfloat16
    where q, k and v are all bf16 and ``native_bf16()``."""
    ok, reason = _load()
    if not ok:
        raise ValueError(f"attention='flash_cpu' is unavailable: {reason}. Use 'chunked' or 'auto'.")
    b, t, _, d = q.shape
    if not supports(d):
        raise ValueError(f"attention='flash_cpu' needs a head dim divisible by {HEAD_DIM_MULTIPLE}; got {d}")
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    if segment_ids is None:
        segment_ids = jnp.zeros((b, t), jnp.int32)
    segment_ids, window, scale = segment_ids.astype(jnp.int32), int(sliding_window or 0), float(scale)
    if q.dtype == k.dtype == v.dtype == jnp.bfloat16 and native_bf16():
        return _flash(q, k, v, segment_ids, window, scale)
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    return _flash(q32, k32, v32, segment_ids, window, scale).astype(q.dtype)


def cached_attention(q, cache_k, cache_v, offset, sliding_window=None, scale=None):
    """Chunked prefill's attention: queries q [B, t, H, D] at positions offset .. offset + t - 1
    attend causally to a KV cache (cache_k, cache_v [B*K, S, D], float32 or bfloat16, heads first
    as ``model.init_cache`` lays it out) that already holds positions 0 .. offset + t - 1. The
    cache is read in place (a 16-bit cache converted tile by tile, never copied whole), so a
    chunk costs its own activations whatever the cache's length. ``offset`` may be traced.
    Equals ``attention.cached_attention``; computes in float32, returns q's dtype. Forward only."""
    if not cached_available():
        raise ValueError(f"flash_cpu.cached_attention is unavailable: {unavailable_reason() or 'needs AVX-512'}")
    b, t, h, d = q.shape
    if not supports(d):
        raise ValueError(f"flash_cpu.cached_attention needs a head dim divisible by {HEAD_DIM_MULTIPLE}; got {d}")
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    segment_ids = jnp.zeros((b, cache_k.shape[1]), jnp.int32)
    out, _ = jax.ffi.ffi_call(
        "yarn_flash_attention_cpu_fwd_cached",
        (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
        vmap_method="sequential",
    )(q.astype(jnp.float32), cache_k, cache_v, segment_ids, jnp.asarray(offset, jnp.int32),
      scale=np.float32(scale), window=np.int64(int(sliding_window or 0)))
    return out.astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, segment_ids, window, scale):
    return _flash_fwd(q, k, v, segment_ids, window, scale)[0]


def _flash_fwd(q, k, v, segment_ids, window, scale):
    b, t, h, _ = q.shape
    target = "yarn_flash_attention_cpu_fwd_bf16" if q.dtype == jnp.bfloat16 else "yarn_flash_attention_cpu_fwd"
    out, lse = jax.ffi.ffi_call(
        target,
        (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
        vmap_method="sequential",
    )(q, k, v, segment_ids, scale=np.float32(scale), window=np.int64(window))
    return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(window, scale, residuals, dout):
    q, k, v, segment_ids, out, lse = residuals
    q32, k32, v32, out32, dout32 = (x.astype(jnp.float32) for x in (q, k, v, out, dout))
    dq, dk, dv = jax.ffi.ffi_call(
        "yarn_flash_attention_cpu_bwd",
        tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)),
        vmap_method="sequential",
    )(q32, k32, v32, segment_ids, out32, lse, dout32, scale=np.float32(scale), window=np.int64(window))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)
