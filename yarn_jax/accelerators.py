"""The accelerators' attention kernels: cuDNN (GPU) and splash (TPU, Pallas/Mosaic), each able to
run on a device mesh.

XLA cannot partition a Mosaic kernel (or an FFI custom call) across devices itself: on a mesh of
several devices each kernel here runs inside ``jax.shard_map``, one call per device on its own
batch rows and heads, and ``attention.py`` registers them with what they support.

- ``splash_attention``: the kernel MaxText uses. Queries may also be split along the sequence
  (the mesh's ``context`` axis): each device then holds a contiguous run of query blocks and all
  keys, and the kernel's mask information is split the same way (``q_seq_shards``), so no device
  computes another's queries. Lengths must be multiples of 128; the block is the largest of
  512, 256, 128 that divides the length (and each device's share of it).
- ``cudnn_attention``: ``jax.nn.dot_product_attention(implementation="cudnn")``; on a mesh,
  shard_map over batch and heads with the sequence gathered (cuDNN's causal mask takes queries
  and keys at the same positions).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

SPLASH_LANES = 128  # splash tiles the sequence in multiples of 128 (the TPU's lane width)
SPLASH_BLOCKS = (512, 256, 128)  # tried in this order; 512 is MaxText's default block


def splash_block(seq_len: int, q_seq_shards: int = 1) -> int | None:
    """The splash block for a length: the largest of ``SPLASH_BLOCKS`` dividing each device's
    share of the queries (None if none does)."""
    if seq_len % q_seq_shards:
        return None
    return next((b for b in SPLASH_BLOCKS if (seq_len // q_seq_shards) % b == 0 and seq_len % b == 0), None)


def splash_unsupported(seq_len: int, q_seq_shards: int = 1) -> str:
    """Why splash cannot take this length (split over ``q_seq_shards`` devices), "" if it can."""
    if splash_block(seq_len, q_seq_shards) is not None:
        return ""
    unit = SPLASH_LANES * q_seq_shards
    lower, upper = (seq_len // unit) * unit, -(-seq_len // unit) * unit
    where = f" split over {q_seq_shards} context devices" if q_seq_shards > 1 else ""
    works = " or ".join(str(n) for n in (lower, upper) if n)
    return f"splash needs a sequence length{where} in multiples of {unit}; got {seq_len} (nearest that work: {works})"


def _splash_kernel(seq_len: int, heads: int, window, block: int, head_shards: int, q_seq_shards: int,
                   interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

    shape = (seq_len, seq_len)
    head_mask = mask_lib.LocalMask(shape, window_size=(window - 1, 0), offset=0) if window else mask_lib.CausalMask(shape)
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv_compute=block, block_kv=block, block_q_dkv=block,
                                  block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([head_mask] * heads), block_sizes=sizes,
                                      head_shards=head_shards, q_seq_shards=q_seq_shards, interpret=interpret)


def _splash_per_device(kernel, q, k, v, q_segments, kv_segments, scale):
    """One device's share: q [b, t, h, D], k and v [b, S, kv, D] (GQA: h a multiple of kv), the
    kernel's mask information for these heads and query blocks."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib

    def one(qb, kb, vb, qs, ks):  # [T, H, D] -> heads first, as the kernel takes them
        out = kernel(jnp.swapaxes(qb * scale, 0, 1), jnp.swapaxes(kb, 0, 1), jnp.swapaxes(vb, 0, 1),
                     segment_ids=kernel_lib.SegmentIds(q=qs, kv=ks))
        return jnp.swapaxes(out, 0, 1)

    return jax.vmap(one)(q, k, v, q_segments, kv_segments).astype(q.dtype)


def splash_attention(q, k, v, segment_ids=None, sliding_window=None, scale=None, *, mesh=None, axes=None,
                     interpret: bool = False, block_size: int | None = None):
    """TPU splash attention, causal with GQA, packed segments and a sliding window: q [B, T, H, D],
    k and v [B, T, K, D]. ``mesh`` with ``axes`` = (batch axes, heads axis, sequence axis) (any of
    them None) runs one kernel per device in shard_map; ``interpret=True`` runs the kernel in
    Python on any backend (slowly: tests)."""
    b, t, h, d = q.shape
    batch_axes, heads_axis, length_axis = axes or (None, None, None)
    head_shards = mesh.shape[heads_axis] if mesh is not None and heads_axis else 1
    q_seq_shards = mesh.shape[length_axis] if mesh is not None and length_axis else 1
    reason = splash_unsupported(t, q_seq_shards)
    if reason:
        raise ValueError(f"attention='splash': {reason}")
    block = min(block_size or splash_block(t, q_seq_shards), t // q_seq_shards)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kernel = _splash_kernel(t, h, sliding_window, block, head_shards, q_seq_shards, interpret)
    segments = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    run = functools.partial(_splash_per_device, scale=scale)
    if mesh is None:
        return run(kernel, q, k, v, segments, segments)
    q_spec, kv_spec = P(batch_axes, length_axis, heads_axis, None), P(batch_axes, None, heads_axis, None)
    kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, P(heads_axis, length_axis)))
    return jax.shard_map(run, mesh=mesh, check_vma=False,
                         in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, P(batch_axes, length_axis), P(batch_axes, None)),
                         out_specs=q_spec)(kernel, q, k, v, segments, segments)


def cudnn_attention(q, k, v, segment_ids=None, sliding_window=None, scale=None, *, mesh=None, axes=None,
                    implementation: str = "cudnn"):
    """cuDNN flash attention through ``jax.nn.dot_product_attention`` (GQA native); packed segments
    become an explicit mask. On a ``mesh``, one call per device over its batch rows and heads
    (``axes`` as ``splash_attention``'s; the sequence is gathered). ``implementation="xla"`` runs
    the same call on any backend (the tests use it to check the arguments)."""

    def run(q, k, v, segment_ids):
        mask = None
        if segment_ids is not None:
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # [B, 1, T, S]
        window = None if not sliding_window else (sliding_window - 1, 0)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=True,
                                            local_window_size=window, implementation=implementation)

    if mesh is None:
        return run(q, k, v, segment_ids)
    batch_axes, heads_axis, _ = axes or (None, None, None)
    spec = P(batch_axes, None, heads_axis, None)
    if segment_ids is None:
        return jax.shard_map(lambda q, k, v: run(q, k, v, None), mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                             check_vma=False)(q, k, v)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(batch_axes, None)), out_specs=spec,
                         check_vma=False)(q, k, v, segment_ids)
