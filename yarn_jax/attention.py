"""Causal grouped-query attention: the kernels, one registry that knows what each can run, and the
one switch (``implementation``) that picks among them.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with K dividing H (grouped-query attention; K = H is
multi-head, K = 1 multi-query). RoPE is applied by the caller (its temperature is folded into
cos/sin), so every kernel computes plain softmax(q k^T * scale) v.

- ``xla``: dense reference, materialises [T, S] logits (float32 softmax). Any platform.
- ``chunked``: pure-JAX blockwise online softmax (FlashAttention-2's algorithm) with a custom
  VJP: only O(T) residuals are kept (output and log-sum-exp), the backward pass recomputes
  blocks, and blocks above the causal diagonal (or outside the sliding window) are never visited.
  Any platform.
- ``flash_cpu``: the same algorithm fused in one C++ kernel per direction for XLA's CPU backend
  (``flash_cpu.py``; compiled on first use, needs a C++ compiler and a head dim divisible by 16).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``; GPU, 16-bit inputs.
- ``splash``: TPU Pallas splash attention; lengths in multiples of 128 (``accelerators.py``).
- ``auto``: the first kernel of the platform's list in ``AUTO`` that supports the step (splash on
  TPU, cudnn on GPU, flash_cpu on CPU), else chunked for long sequences and xla for short ones.
  Only ``auto`` falls back; an explicit kernel that cannot run is refused, naming why and which
  kernels can.

What a kernel can run is decided for a ``Target``: the platform of the devices the step is
compiled for (the active mesh's devices, so a step compiled ahead of time for a TPU topology on a
CPU host gets a TPU kernel; ``jax.default_backend()`` only without a mesh), dtype, head dim,
length and mesh. Kernels that XLA cannot partition (Pallas, FFI and cuDNN calls) run on a mesh
inside ``shard_map``, one call per device on its batch rows and heads; splash also takes queries
split along the sequence (the ``context`` axis), the others gather the sequence.

Masks: causal by token index; ``segment_ids`` [B, T] (packed documents never attend across each
other); ``sliding_window`` W keeps keys with q_index - kv_index < W (Mistral's convention).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from yarn_jax import accelerators
from yarn_jax import flash_cpu
from yarn_jax import sharding

IMPLEMENTATIONS = ("xla", "chunked", "flash_cpu", "cudnn", "splash", "auto")
_NEG = -1e30  # finite "minus infinity": keeps exp() and max() NaN-free on fully masked rows
# chunked attention's default block: across the CPU shapes probed it was never far from the best,
# while smaller and larger blocks each lost badly at one end of the range (bench.md, "Measurements
# behind design choices in the code").
DEFAULT_BLOCK_SIZE = 256
_AUTO_CHUNKED_FROM = 1024  # sequence length from which `auto` prefers chunked over the dense kernel


# ------------------------------------------------------------------------------------------------
# The registry: what each kernel supports, how it runs (on a mesh too)
# ------------------------------------------------------------------------------------------------


def _first_device(mesh=None):
    mesh = sharding.active_mesh() if mesh is None else mesh
    return mesh.devices.flat[0] if mesh is not None else jax.devices()[0]


def platform_of(mesh=None) -> str:
    """The platform ("cpu", "gpu", "tpu") of the devices a step runs on: the mesh's (by default
    the active ``sharding.activation_sharding`` mesh), else JAX's default backend."""
    mesh = sharding.active_mesh() if mesh is None else mesh
    if mesh is not None:
        platform = mesh.devices.flat[0].platform
        return "gpu" if platform in ("cuda", "rocm") else platform
    return jax.default_backend()


@dataclasses.dataclass(frozen=True)
class Target:
    """What a kernel is asked to run: the platform (and device kind, e.g. "TPU v4") of the step's
    devices, the input dtype, head dim and sequence length, and the mesh (None: one device)."""

    platform: str
    dtype: Any
    head_dim: int
    seq_len: int
    mesh: Any = None
    device_kind: str = ""

    def axis_size(self, axis: str) -> int:
        return 1 if self.mesh is None else self.mesh.shape.get(axis, 1)


def target(seq_len: int, dtype=jnp.float32, head_dim: int = 64, mesh=None) -> Target:
    """The Target of a step here: under ``mesh`` (default: the active one)."""
    mesh = sharding.active_mesh() if mesh is None else mesh
    return Target(platform_of(mesh), jnp.dtype(dtype), int(head_dim), int(seq_len), mesh,
                  getattr(_first_device(mesh), "device_kind", ""))


def _needs_platform(platform: str, t: Target) -> str:
    if t.platform == platform:
        return ""
    return f"it runs on {platform.upper()}; this step is compiled for {t.platform!r}"


def _flash_cpu_unsupported(t: Target) -> str:
    reason = _needs_platform("cpu", t) or flash_cpu.unavailable_reason()
    if not reason and not flash_cpu.supports(t.head_dim):
        reason = f"it needs a head dim divisible by {flash_cpu.HEAD_DIM_MULTIPLE}; got {t.head_dim}"
    return reason


def _flash_cpu_cached_unsupported(t: Target) -> str:
    reason = _flash_cpu_unsupported(t)
    if not reason and not flash_cpu.cached_available():
        from yarn_jax import cpu_build

        reason = f"its cached forward (chunked prefill) needs AVX-512; this CPU: {cpu_build.describe()}"
    return reason


def _cudnn_unsupported(t: Target) -> str:
    reason = _needs_platform("gpu", t)
    if not reason and t.dtype.itemsize != 2:
        reason = f"it takes float16 or bfloat16 inputs; got {t.dtype.name}"
    if not reason and (t.head_dim % 8 or t.head_dim > 256):
        reason = f"it needs a head dim that is a multiple of 8 and at most 256 (128 before Hopper); got {t.head_dim}"
    return reason


def _splash_unsupported(t: Target) -> str:
    reason = _needs_platform("tpu", t) or accelerators.splash_unsupported(t.seq_len, t.axis_size("context"))
    if not reason and t.dtype.itemsize == 2 and t.device_kind in ("TPU v2", "TPU v3"):
        # Mosaic on v2/v3 rejects the kernel's 16-bit matmuls (E2001, seen compiling for v2:2x2 and v3:2x2).
        reason = f"its Mosaic kernel has no {t.dtype.name} matmul on {t.device_kind} (float32 inputs compile there)"
    return reason


def _mesh_axes(mesh, q, k, shards_sequence: bool):
    """(batch axes, heads axis, sequence axis) a per-device kernel is split over on ``mesh``: the
    batch as the model shards it, heads only where query and kv heads both divide (each device
    keeps whole GQA groups), and the sequence only for kernels that take a query slice."""
    batch = sharding.logical_to_spec(("batch",), q.shape[:1], mesh)[0]
    heads = sharding.logical_to_spec(("heads",), (math.gcd(q.shape[2], k.shape[2]),), mesh)[0]
    length = sharding.logical_to_spec(("length",), q.shape[1:2], mesh)[0] if shards_sequence else None
    return batch, heads, length


def _run_dense(q, k, v, segment_ids, window, scale, block_size, mesh):
    idx = jnp.arange(q.shape[1])
    return dense_attention(q, k, v, idx, idx, segment_ids, segment_ids, window, scale)


def _run_chunked(q, k, v, segment_ids, window, scale, block_size, mesh):
    segments = one_segment(q) if segment_ids is None else segment_ids.astype(jnp.int32)
    return chunked_attention(q, k, v, segments, window, block_size, scale)


def _run_flash_cpu(q, k, v, segment_ids, window, scale, block_size, mesh):
    segments = one_segment(q) if segment_ids is None else segment_ids.astype(jnp.int32)
    kernel = functools.partial(flash_cpu.flash_attention, sliding_window=window, scale=scale)
    if mesh is None:
        return kernel(q, k, v, segments)
    batch, heads, _ = _mesh_axes(mesh, q, k, shards_sequence=False)
    qkv = jax.sharding.PartitionSpec(batch, None, heads, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, jax.sharding.PartitionSpec(batch, None)),
                         out_specs=qkv, check_vma=False)(q, k, v, segments)


def _run_cudnn(q, k, v, segment_ids, window, scale, block_size, mesh):
    axes = _mesh_axes(mesh, q, k, shards_sequence=False) if mesh is not None else None
    return accelerators.cudnn_attention(q, k, v, segment_ids, window, scale, mesh=mesh, axes=axes)


def _run_splash(q, k, v, segment_ids, window, scale, block_size, mesh):
    axes = _mesh_axes(mesh, q, k, shards_sequence=True) if mesh is not None else None
    return accelerators.splash_attention(q, k, v, segment_ids, window, scale, mesh=mesh, axes=axes)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One attention kernel: why it cannot run a Target ("" when it can), how it runs
    (q, k, v, segment_ids or None, sliding window or None, scale, block size, mesh or None), and
    optionally a cached forward for chunked prefill (a chunk of queries q at positions
    index.. against a KV cache: (q, cache_k, cache_v, index, window, scale)) with its own
    ``cached_unsupported``."""

    name: str
    unsupported: Callable[[Target], str]
    run: Callable
    cached: Callable | None = None
    cached_unsupported: Callable[[Target], str] = lambda t: "it has no cached forward"

    def cached_runs(self, t: Target) -> bool:
        return self.cached is not None and not self.cached_unsupported(t)


KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("xla", lambda t: "", _run_dense),
    Kernel("chunked", lambda t: "", _run_chunked),
    Kernel("flash_cpu", _flash_cpu_unsupported, _run_flash_cpu, flash_cpu.cached_attention,
           _flash_cpu_cached_unsupported),
    Kernel("cudnn", _cudnn_unsupported, _run_cudnn),
    Kernel("splash", _splash_unsupported, _run_splash),
)}
# What ``auto`` tries first on each platform; the dense fallback (chunked or xla) comes after.
AUTO = {"tpu": ("splash",), "gpu": ("cudnn",), "cpu": ("flash_cpu",)}


def resolve(implementation: str, t: Target) -> Kernel:
    """The kernel ``implementation`` names for ``t`` (``auto``: the platform's first that supports
    it, else chunked from 1024 tokens and xla below). Raises ValueError naming why an explicit
    kernel cannot run and which ones can."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention: must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")
    if implementation == "auto":
        for name in AUTO.get(t.platform, ()):
            if not KERNELS[name].unsupported(t):
                return KERNELS[name]
        return KERNELS["chunked" if t.seq_len >= _AUTO_CHUNKED_FROM else "xla"]
    kernel = KERNELS[implementation]
    reason = kernel.unsupported(t)
    if reason:
        works = [name for name, k in KERNELS.items() if not k.unsupported(t)]
        raise ValueError(f"attention={implementation!r} cannot run this step: {reason}. Kernels that can: "
                         f"{', '.join(works + ['auto'])}")
    return kernel


def resolve_implementation(implementation: str, seq_len: int, dtype=jnp.float32, head_dim: int = 64) -> str:
    """The name of the kernel ``implementation`` means for a step of this length, dtype and head
    dim under the active mesh (or on this process's default backend)."""
    return resolve(implementation, target(seq_len, dtype, head_dim)).name


def attention(q, k, v, *, segment_ids=None, sliding_window: int | None = None,
              implementation: str = "xla", block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None):
    """Causal self-attention over a whole sequence (training, prefill, evaluation), by the kernel
    ``implementation`` resolves to for these inputs under the active mesh.

    The arguments are normalised here, once: ``scale`` defaults to 1/sqrt(head_dim) and a zero
    ``sliding_window`` means none."""
    _check_shapes(q, k, v)
    mesh = sharding.active_mesh()
    kernel = resolve(implementation, target(q.shape[1], q.dtype, q.shape[-1], mesh))
    return kernel.run(q, k, v, segment_ids, sliding_window or None, default_scale(q, scale), block_size, mesh)


def default_scale(q, scale=None) -> float:
    """The softmax scale: 1/sqrt(head_dim) unless given."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def one_segment(q) -> jax.Array:
    """Segment ids [B, T] putting every token in one document (the kernels that take an array)."""
    return jnp.zeros(q.shape[:2], jnp.int32)


def _check_shapes(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"attention: expected q [B,T,H,D] and k, v [B,S,K,D]; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: kv heads ({k.shape[2]}) must divide query heads ({q.shape[2]})")


def _mask(q_idx, kv_idx, q_seg, kv_seg, window):
    """Boolean [B or 1, Tq, Tk]: causal, same segment, within the sliding window."""
    mask = kv_idx[None, :] <= q_idx[:, None]
    if window:
        mask &= q_idx[:, None] - kv_idx[None, :] < window
    mask = mask[None]
    if q_seg is not None:
        mask = mask & (q_seg[:, :, None] == kv_seg[:, None, :])
    return mask


def _group(q, num_kv_heads):
    """[B, T, H, D] -> [B, T, K, G, D]: the G query heads sharing each kv head."""
    b, t, h, d = q.shape
    return q.reshape(b, t, num_kv_heads, h // num_kv_heads, d)


def _heads_first(q, num_kv_heads):
    """[B, T, H, D] -> [B, K, G*T, D]: each kv head's G query heads stacked along the query axis,
    so logits are one plain batched matmul per (batch, kv head), which XLA's CPU backend runs
    much faster than a 5-D einsum (bench.md, "Measurements behind design choices in the code")."""
    b, t, h, d = q.shape
    g = h // num_kv_heads
    return q.reshape(b, t, num_kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, num_kv_heads, g * t, d)


def _heads_last(out, t, h):
    """Inverse of ``_heads_first``: [B, K, G*T, D] -> [B, T, H, D]."""
    b, k, _, d = out.shape
    return out.reshape(b, k, h // k, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def dense_attention(q, k, v, q_idx, kv_idx, q_seg=None, kv_seg=None, window=None, scale=None):
    """Reference attention with explicit token indices."""
    scale = default_scale(q, scale)
    b, t, h, _ = q.shape
    kv_heads = k.shape[2]
    qh = _heads_first(q, kv_heads)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]
    logits = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=jnp.float32) * scale
    mask = _mask(q_idx, kv_idx, q_seg, kv_seg, window)  # [B|1, T, S], tiled over the G query heads
    mask = jnp.tile(mask, (1, h // kv_heads, 1))[:, None]
    probs = jax.nn.softmax(jnp.where(mask, logits, _NEG), axis=-1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), vh, preferred_element_type=jnp.float32)
    return _heads_last(out, t, h).astype(q.dtype)


def prefills_in_chunks(implementation: str, dtype, head_dim: int) -> bool:
    """Whether the kernel ``implementation`` resolves to here has a cached forward that runs:
    then a long prompt can be prefilled a chunk at a time, each chunk attending to the KV cache."""
    return _cached_kernel(implementation, dtype, head_dim) is not None


def _cached_kernel(implementation: str, dtype, head_dim: int) -> Kernel | None:
    t = target(_AUTO_CHUNKED_FROM, dtype, head_dim)
    try:
        kernel = resolve(implementation, t)
    except ValueError:
        return None
    return kernel if kernel.cached_runs(t) else None


def cached_attention(q, cache_k, cache_v, index, window=None, scale=None, implementation: str = "xla"):
    """KV-cache decoding: t new tokens, queries q [B, t, H, D] at positions index..index+t-1, attend
    causally to the cache (cache_k, cache_v [B*K, S, D], heads first, already holding their own
    keys and values). The cache is read where it lies, in its own dtype and layout. ``index`` is
    one position for the batch, or one per row [B] (a batch of prompts of different lengths: the
    dense product, whose mask is per row).

    A chunk of several tokens goes to the cached forward of the kernel ``implementation``
    resolves to, where it has one that runs here (flash_cpu's: O(t) memory, visiting only the
    slots up to the last query). Otherwise, and for single tokens, the dense product: one batched
    matmul per (batch, kv head) with float32 accumulation, no transposed or upcast copy of the
    cache, over all S slots ([B, H, t, S] logits: for a few tokens)."""
    t = q.shape[1]
    kernel = _cached_kernel(implementation, q.dtype, q.shape[-1]) if t > 1 and jnp.ndim(index) == 0 else None
    if kernel is not None:
        return kernel.cached(q, cache_k, cache_v, index, window, scale)
    scale = default_scale(q, scale)
    b, _, h, _ = q.shape
    kv_heads, size = cache_k.shape[0] // b, cache_k.shape[1]
    qh = _heads_first(q, kv_heads).reshape(b * kv_heads, -1, q.shape[-1])  # [B*K, G*t, D]
    logits = jnp.einsum("nqd,nsd->nqs", qh.astype(cache_k.dtype), cache_k, preferred_element_type=jnp.float32)
    row_mask = lambda i: _mask(i + jnp.arange(t), jnp.arange(size), None, None, window)  # noqa: E731  [1, t, S]
    if jnp.ndim(index):  # rows at different positions: a mask per row, repeated for its kv heads
        mask = jnp.repeat(jax.vmap(row_mask)(index)[:, 0], kv_heads, axis=0)  # [B*K, t, S]
    else:
        mask = row_mask(index)
    mask = jnp.tile(mask, (1, h // kv_heads, 1))
    probs = jax.nn.softmax(jnp.where(mask, logits * scale, _NEG), axis=-1)
    out = jnp.einsum("nqs,nsd->nqd", probs.astype(cache_v.dtype), cache_v, preferred_element_type=jnp.float32)
    return _heads_last(out.reshape(b, kv_heads, -1, q.shape[-1]), t, h).astype(q.dtype)


# ------------------------------------------------------------------------------------------------
# chunked: blockwise online softmax with a recomputing backward pass
# ------------------------------------------------------------------------------------------------


def chunked_attention(q, k, v, segment_ids=None, sliding_window=None, block_size=DEFAULT_BLOCK_SIZE, scale=None):
    """O(T)-memory causal attention (forward and backward). Equals ``dense_attention``."""
    scale = default_scale(q, scale)
    b, t, h, d = q.shape
    block = max(1, min(block_size, t))
    padded = -(-t // block) * block
    segment_ids = one_segment(q) if segment_ids is None else segment_ids
    if padded != t:
        # Padded keys sit after every real query, so the causal mask already hides them.
        pad = [(0, 0), (0, padded - t), (0, 0), (0, 0)]
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, [(0, 0), (0, padded - t)], constant_values=-1)
    out = _chunked(q, k, v, segment_ids.astype(jnp.int32), sliding_window or 0, block, float(scale))
    return out[:, :t]


def _kv_block_range(i, block, window):
    """kv blocks [lo, i] that query block i can see (causal; within the window if any)."""
    if not window:
        return 0, i
    return jnp.maximum(0, (i * block - (window - 1)) // block), i


def _q_block_range(j, block, window, num_blocks):
    """query blocks [j, hi] that can see kv block j."""
    if not window:
        return j, num_blocks - 1
    return j, jnp.minimum(num_blocks - 1, (j * block + block - 1 + window - 1) // block)


def _take(x, i, block, axis=1):
    return jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)


# Inside the kernel every array is heads-first, so each block product is a plain batched matmul
# over (batch, kv head) and no block is transposed inside the loops: queries, dO and dQ are
# [B, K, G, T, D] (the G query heads of each kv head), keys, values, dK and dV [B, K, T, D],
# log-sum-exp and delta [B, K, G, T].


def _q_rows(x, kv_heads):
    """[B, T, H, D] -> [B, K, G, T, D]."""
    return _group(x, kv_heads).transpose(0, 2, 3, 1, 4)


def _block_probs(qi, kj, i, j, seg, block, window, scale, lse=None):
    """Masked logits [B, K, G, q, s] of one (query block, kv block) pair; with ``lse`` the
    normalised probabilities."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
    q_idx = i * block + jnp.arange(block)
    kv_idx = j * block + jnp.arange(block)
    mask = _mask(q_idx, kv_idx, _take(seg, i, block), _take(seg, j, block), window)[:, None, None]
    if lse is None:
        return jnp.where(mask, s, _NEG), mask
    return jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0), mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(q, k, v, seg, window, block, scale):
    return _chunked_forward(q, k, v, seg, window, block, scale)[0]


def _chunked_forward(q, k, v, seg, window, block, scale):
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    groups = h // kv_heads
    qh = _q_rows(q, kv_heads)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    num_blocks = t // block

    def query_block(i):
        qi = _take(qh, i, block, axis=3)

        def step(j, carry):
            m, l, acc = carry
            s, mask = _block_probs(qi, _take(kh, j, block, axis=2), i, j, seg, block, window, scale)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
            correction = jnp.exp(m - m_new)
            l = l * correction + p.sum(-1)
            pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), _take(vh, j, block, axis=2),
                            preferred_element_type=jnp.float32)
            return m_new, l, acc * correction[..., None] + pv

        init = (jnp.full((b, kv_heads, groups, block), _NEG, jnp.float32),
                jnp.zeros((b, kv_heads, groups, block), jnp.float32),
                jnp.zeros((b, kv_heads, groups, block, d), jnp.float32))
        lo, hi = _kv_block_range(i, block, window)
        m, l, acc = jax.lax.fori_loop(lo, hi + 1, step, init)
        l = jnp.where(l == 0, 1.0, l)
        return acc / l[..., None], m + jnp.log(l)  # [B, K, G, q, D], [B, K, G, q]

    out_h, lse = jax.lax.map(query_block, jnp.arange(num_blocks))  # [n, B, K, G, q, ...]
    out_h = jnp.moveaxis(out_h, 0, 3).reshape(b, kv_heads, groups, t, d)
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kv_heads, groups, t)
    out = out_h.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)
    return out, (qh, kh, vh, seg, out_h, lse)


def _chunked_bwd(window, block, scale, residuals, dout):
    qh, kh, vh, seg, out_h, lse = residuals
    b, kv_heads, groups, t, d = qh.shape
    num_blocks = t // block
    doh = _q_rows(dout, kv_heads)
    # delta_i = rowsum(dO_i * O_i): the softmax-Jacobian correction term of FlashAttention-2.
    delta = jnp.einsum("bkgtd,bkgtd->bkgt", doh.astype(jnp.float32), out_h.astype(jnp.float32))

    # One pass, kv blocks outer and query blocks inner (FlashAttention-2's order): each block pair's
    # probabilities and dS are recomputed once and feed dK, dV and dQ together; dQ accumulates in a
    # full-length buffer carried through the loop (updated in place by XLA).
    def dkv_block(dq, j):
        kj, vj = _take(kh, j, block, axis=2), _take(vh, j, block, axis=2)

        def step(i, carry):
            dk, dv, dq = carry
            qi, doi = _take(qh, i, block, axis=3), _take(doh, i, block, axis=3)
            p, _ = _block_probs(qi, kj, i, j, seg, block, window, scale, lse=_take(lse, i, block, axis=3))
            dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - _take(delta, i, block, axis=3)[..., None])
            dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
            dq_i = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(kj.dtype), kj, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_slice_in_dim(dq, _take(dq, i, block, axis=3) + dq_i, i * block, axis=3)
            return dk, dv, dq

        lo, hi = _q_block_range(j, block, window, num_blocks)
        zeros = jnp.zeros((b, kv_heads, block, d), jnp.float32)
        dk, dv, dq = jax.lax.fori_loop(lo, hi + 1, step, (zeros, zeros, dq))
        return dq, (dk * scale, dv)

    dq = jnp.zeros((b, kv_heads, groups, t, d), jnp.float32)
    dq, (dk, dv) = jax.lax.scan(dkv_block, dq, jnp.arange(num_blocks))  # dk, dv: [n, B, K, block, D]
    dq = (dq * scale).transpose(0, 3, 1, 2, 4).reshape(b, t, kv_heads * groups, d)
    dk = jnp.moveaxis(dk, 0, 2).reshape(b, kv_heads, t, d).transpose(0, 2, 1, 3)
    dv = jnp.moveaxis(dv, 0, 2).reshape(b, kv_heads, t, d).transpose(0, 2, 1, 3)
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype), None


_chunked.defvjp(_chunked_forward, _chunked_bwd)
