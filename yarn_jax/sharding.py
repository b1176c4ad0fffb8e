"""Sharding as data: one device mesh, one table from logical axis names to mesh axes.

Mesh axes: ``data`` (batch replicas), ``fsdp`` (batch, and parameters/optimizer state sharded
ZeRO-3 style), ``tensor`` (heads, MLP and vocabulary dims), ``context`` (the sequence). Model code
names its dimensions logically (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``vocab``, ``norm``,
``layers``, ``batch``, ``length``); ``LOGICAL_RULES`` says where each goes. The same code runs on 1 CPU, 8
fake CPU devices, a TPU slice or a GPU cluster.

Activations are constrained only inside ``activation_sharding(mesh)``, which the trainer enters
while tracing its step; elsewhere ``constrain`` is the identity.
"""

from __future__ import annotations

import contextlib
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from yarn_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor", "context")

LOGICAL_RULES: dict[str, tuple[str, ...] | str | None] = {
    "batch": ("data", "fsdp"),
    "length": "context",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vocab": "tensor",
    "norm": None,
    "layers": None,  # the stacked axis of scanned layers (ModelConfig.scan_layers): every device holds all
}


def mesh_shape(sizes: dict, num_devices: int) -> dict[str, int]:
    """Resolves the config's mesh sizes (one may be -1: fills the rest) against the device count."""
    unknown = sorted(set(sizes) - set(MESH_AXES))
    if unknown:
        raise UserError(f"config.mesh: unknown axes {', '.join(unknown)}; allowed: {', '.join(MESH_AXES)}")
    shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in shape.items() if size == -1]
    if len(fill) > 1:
        raise UserError(f"config.mesh: at most one axis may be -1; got {', '.join(fill)}")
    if any(size == 0 or size < -1 for size in shape.values()):
        raise UserError(f"config.mesh: sizes must be positive or -1; got {shape}")
    known = math.prod(size for size in shape.values() if size != -1)
    fixed = " x ".join(f"{axis} {size}" for axis, size in shape.items() if size != -1)
    if fill:
        if num_devices % known:
            raise UserError(f"config.mesh: {fixed} = {known} does not divide the {num_devices} devices of this run; "
                            f"choose sizes whose product divides {num_devices} (the -1 axis, {fill[0]}, takes the rest)")
        shape[fill[0]] = num_devices // known
    if math.prod(shape.values()) != num_devices:
        raise UserError(f"config.mesh: {fixed} uses {known} devices; this run has {num_devices}: make the product "
                        f"{num_devices}, or set one axis to -1 to take the rest")
    return shape


def make_mesh(sizes: dict, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(dict(sizes), len(devices))
    grid = np.asarray(devices).reshape([shape[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def logical_to_spec(names, shape, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of an array with logical dim ``names``: each name's mesh axes, dropped where
    the dim is not divisible by them (replicated instead) or already used by an earlier dim."""
    used, spec = set(), []
    for name, size in zip(names or (), shape):
        axes = LOGICAL_RULES.get(name) if name else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def variable_sharding(variable, mesh: Mesh | None):
    """Where a parameter lives: by the ``logical_axes`` metadata every ``nnx.Param`` of the model
    carries (None without a mesh: the default device). The one placement rule for parameters,
    used by random initialisation, every checkpoint loader and the optimizer state."""
    if mesh is None:
        return None
    names = variable.get_metadata().get("logical_axes")
    return NamedSharding(mesh, logical_to_spec(names, variable.shape, mesh))


def state_shardings(abstract_state, mesh: Mesh):
    """The (abstract) nnx State with each Variable's value replaced by its NamedSharding
    (``variable_sharding``): the same pytree structure, so it serves as jit in/out shardings."""
    from flax import nnx

    return jax.tree.map(lambda v: v.replace(variable_sharding(v, mesh)), abstract_state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Training batches [B, T]: batch over (data, fsdp), sequence over context."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), "context"))


_ACTIVE: list[Mesh] = []


@contextlib.contextmanager
def activation_sharding(mesh: Mesh):
    """Within this context, ``constrain`` pins activations to the mesh by their logical names."""
    _ACTIVE.append(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.pop()


def active_mesh() -> Mesh | None:
    """The mesh of the innermost ``activation_sharding`` (None outside it)."""
    return _ACTIVE[-1] if _ACTIVE else None


def constrain(x, names):
    """with_sharding_constraint by logical names (identity outside ``activation_sharding``)."""
    mesh = active_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh)))
