"""Causal grouped-query attention kernels, chosen by one switch (``implementation``).

Shapes: q [B, T, H, D], k and v [B, S, K, D] with K dividing H (grouped-query attention; K = H is
multi-head, K = 1 multi-query). RoPE is applied by the caller (its temperature is folded into
cos/sin), so every kernel computes plain softmax(q k^T * scale) v.

- ``xla``: dense reference, materialises [T, S] logits (float32 softmax).
- ``chunked``: pure-JAX blockwise online softmax (FlashAttention-2's algorithm) with a custom
  VJP: only O(T) residuals are kept (output and log-sum-exp), the backward pass recomputes
  blocks, and blocks above the causal diagonal (or outside the sliding window) are never visited.
- ``flash_cpu``: the same algorithm fused in one C++ kernel per direction for XLA's CPU backend
  (``flash_cpu.py``; compiled on first use, needs a C++ compiler and a head dim divisible by 16).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")``; GPU only.
- ``splash``: TPU Pallas splash attention; TPU only (``interpret=True`` runs it anywhere, slowly).
- ``auto``: cudnn on GPU with 16-bit inputs, splash on TPU, flash_cpu on CPU where it is available,
  else chunked for long sequences and xla for short ones. Only ``auto`` falls back; an explicit
  kernel the backend lacks is an error.

Masks: causal by token index; ``segment_ids`` [B, T] (packed documents never attend across each
other); ``sliding_window`` W keeps keys with q_index - kv_index < W (Mistral's convention).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from yarn_jax import flash_cpu
from yarn_jax import sharding

IMPLEMENTATIONS = ("xla", "chunked", "flash_cpu", "cudnn", "splash", "auto")
_NEG = -1e30  # finite "minus infinity": keeps exp() and max() NaN-free on fully masked rows
# chunked attention's default block: across the CPU shapes probed (experiments/results/bench.md,
# block size section) it was never far from the best, while smaller and larger blocks each lost
# badly at one end of the range.
DEFAULT_BLOCK_SIZE = 256
_AUTO_CHUNKED_FROM = 1024  # sequence length from which `auto` prefers chunked on CPU


def attention(q, k, v, *, segment_ids=None, sliding_window: int | None = None,
              implementation: str = "xla", block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None):
    """Causal self-attention over a whole sequence (training, prefill, evaluation).

    The arguments are normalised here, once: ``scale`` defaults to 1/sqrt(head_dim), a missing
    ``segment_ids`` becomes one segment (zeros) for the kernels that take an array, and a zero
    ``sliding_window`` means none."""
    _check_shapes(q, k, v)
    scale = default_scale(q, scale)
    sliding_window = sliding_window or None
    implementation = resolve_implementation(implementation, q.shape[1], q.dtype, q.shape[-1])
    if implementation == "xla":
        idx = jnp.arange(q.shape[1])
        return dense_attention(q, k, v, idx, idx, segment_ids, segment_ids, sliding_window, scale)
    if implementation == "cudnn":  # no segments: the fast causal path without an explicit mask
        return cudnn_attention(q, k, v, segment_ids, sliding_window, scale)
    segments = one_segment(q) if segment_ids is None else segment_ids.astype(jnp.int32)
    if implementation == "chunked":
        return chunked_attention(q, k, v, segments, sliding_window, block_size, scale)
    if implementation == "flash_cpu":
        return _flash_cpu_sharded(q, k, v, segments, sliding_window, scale)
    return splash_attention(q, k, v, segments, sliding_window, scale)


def default_scale(q, scale=None) -> float:
    """The softmax scale: 1/sqrt(head_dim) unless given."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def one_segment(q) -> jax.Array:
    """Segment ids [B, T] putting every token in one document (the kernels that take an array)."""
    return jnp.zeros(q.shape[:2], jnp.int32)


def resolve_implementation(implementation: str, seq_len: int, dtype=jnp.float32, head_dim: int = 64) -> str:
    """The kernel ``implementation`` names on this backend; raises if the backend lacks it."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention: must be one of {', '.join(IMPLEMENTATIONS)}; got {implementation!r}")
    backend = jax.default_backend()
    if implementation == "auto":
        if backend == "gpu" and jnp.dtype(dtype).itemsize == 2:
            return "cudnn"
        if backend == "tpu":
            return "splash"
        if backend == "cpu" and flash_cpu.supports(head_dim) and flash_cpu.available():
            return "flash_cpu"
        return "chunked" if seq_len >= _AUTO_CHUNKED_FROM else "xla"
    if implementation == "cudnn" and backend != "gpu":
        raise ValueError(f"attention='cudnn' needs a GPU backend; this process runs on {backend!r}. "
                         "Use 'chunked' (any backend) or 'auto' (falls back).")
    if implementation == "flash_cpu" and not flash_cpu.available():
        raise ValueError(f"attention='flash_cpu' is unavailable: {flash_cpu.unavailable_reason()}. "
                         "Use 'chunked' (any backend) or 'auto' (falls back).")
    if implementation == "splash" and backend != "tpu":
        raise ValueError(f"attention='splash' needs a TPU backend; this process runs on {backend!r}. "
                         "Use 'chunked' (any backend) or 'auto' (falls back).")
    return implementation


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
    much faster than a 5-D einsum (bench.md, attention layout)."""
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


def cached_kernel(implementation: str, dtype, head_dim: int) -> bool:
    """Whether ``cached_attention(..., implementation="flash_cpu")`` runs for a model whose
    attention is ``implementation``: it resolves to flash_cpu here and the kernel can read a cache."""
    try:
        resolved = resolve_implementation(implementation, _AUTO_CHUNKED_FROM, dtype, head_dim)
    except ValueError:
        return False
    return resolved == "flash_cpu" and flash_cpu.supports(head_dim) and flash_cpu.cached_available()


def cached_attention(q, cache_k, cache_v, index, window=None, scale=None, implementation: str = "xla"):
    """KV-cache decoding: t new tokens, queries q [B, t, H, D] at positions index..index+t-1, attend
    causally to the cache (cache_k, cache_v [B*K, S, D], heads first, already holding their own
    keys and values). The cache is read where it lies, in its own dtype and layout.

    ``xla``: one batched matmul per (batch, kv head) with float32 accumulation, no transposed or
    upcast copy of the cache, over all S slots ([B, H, t, S] logits: for a few tokens).
    ``flash_cpu``: the fused kernel (``flash_cpu.cached_attention``), O(t) memory, visiting only
    the slots up to the last query: for chunks of many tokens (chunked prefill)."""
    if implementation == "flash_cpu":
        return flash_cpu.cached_attention(q, cache_k, cache_v, index, window, scale)
    if implementation != "xla":
        raise ValueError(f"cached_attention: implementation must be 'xla' or 'flash_cpu'; got {implementation!r}")
    scale = default_scale(q, scale)
    b, t, h, _ = q.shape
    kv_heads, size = cache_k.shape[0] // b, cache_k.shape[1]
    qh = _heads_first(q, kv_heads).reshape(b * kv_heads, -1, q.shape[-1])  # [B*K, G*t, D]
    logits = jnp.einsum("nqd,nsd->nqs", qh.astype(cache_k.dtype), cache_k, preferred_element_type=jnp.float32)
    mask = _mask(index + jnp.arange(t), jnp.arange(size), None, None, window)  # [1, t, S]
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


# ------------------------------------------------------------------------------------------------
# flash_cpu under a device mesh
# ------------------------------------------------------------------------------------------------


def _flash_cpu_sharded(q, k, v, segment_ids, sliding_window, scale):
    """``flash_cpu.flash_attention``; inside the trainer's mesh, one kernel call per device on its
    own batch rows and heads (XLA cannot partition a custom call itself). The sequence is gathered:
    the kernel needs every query's keys."""
    mesh = sharding.active_mesh()
    kernel = functools.partial(flash_cpu.flash_attention, sliding_window=sliding_window, scale=scale)
    if mesh is None:
        return kernel(q, k, v, segment_ids)
    batch = sharding.logical_to_spec(("batch",), q.shape[:1], mesh)[0]
    # Heads split only where both query and kv heads divide evenly, so each device keeps whole groups.
    heads = sharding.logical_to_spec(("heads",), (math.gcd(q.shape[2], k.shape[2]),), mesh)[0]
    qkv = jax.sharding.PartitionSpec(batch, None, heads, None)
    seg = jax.sharding.PartitionSpec(batch, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv,
                         check_vma=False)(q, k, v, segment_ids)


# ------------------------------------------------------------------------------------------------
# Accelerator kernels
# ------------------------------------------------------------------------------------------------


def cudnn_attention(q, k, v, segment_ids=None, sliding_window=None, scale=None, implementation="cudnn"):
    """cuDNN flash attention through ``jax.nn.dot_product_attention`` (GQA native). Packed
    segments become an explicit mask. ``implementation="xla"`` runs the same call on any backend
    (the tests use it to check the arguments)."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, T, S]
    window = None if not sliding_window else (sliding_window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=True,
                                        local_window_size=window, implementation=implementation)


def splash_attention(q, k, v, segment_ids=None, sliding_window=None, scale=None, interpret=False,
                     block_size: int = 512):
    """TPU Pallas splash attention (the kernel MaxText uses), per batch element. Sequence length
    must be a multiple of 128; ``interpret=True`` runs the kernel in Python on any backend."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    b, t, h, d = q.shape
    if t % 128:
        raise ValueError(f"attention='splash' needs a sequence length divisible by 128; got {t}")
    scale = default_scale(q, scale)
    if sliding_window:
        head_mask = mask_lib.LocalMask((t, t), window_size=(sliding_window - 1, 0), offset=0)
    else:
        head_mask = mask_lib.CausalMask((t, t))
    blk = min(block_size, t)
    sizes = kernel_lib.BlockSizes(block_q=blk, block_kv_compute=blk, block_kv=blk, block_q_dkv=blk,
                                  block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    kernel = kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([head_mask] * h), block_sizes=sizes,
                                        head_shards=1, q_seq_shards=1, interpret=interpret)
    segment_ids = one_segment(q) if segment_ids is None else segment_ids

    def one(qb, kb, vb, seg):  # [T, H, D] -> heads first, as the kernel expects
        ids = kernel_lib.SegmentIds(q=seg, kv=seg)
        out = kernel(jnp.swapaxes(qb * scale, 0, 1), jnp.swapaxes(kb, 0, 1), jnp.swapaxes(vb, 0, 1),
                     segment_ids=ids)
        return jnp.swapaxes(out, 0, 1)

    return jax.vmap(one)(q, k, v, segment_ids.astype(jnp.int32)).astype(q.dtype)
