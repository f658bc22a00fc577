"""Device mesh and logical-axis sharding: the only place sharding is decided.

Model code names the axes of every parameter and key activation with *logical* names
(`batch`, `embed`, `heads`, ...). A rules table (`config.MeshSection.rules`) maps each logical
name to a mesh axis, a list of mesh axes, or None (replicated). Resolution rules, applied per
array, in dimension order:

- a mesh axis absent from the mesh, or of size 1, is dropped (it would shard nothing);
- a mesh axis already used by an earlier dimension of the same array is dropped (a mesh axis can
  split an array only once; e.g. activations `(batch, length, embed)` with batch -> [data, fsdp]
  and embed -> fsdp shard the batch over fsdp and replicate embed);
- when the shape is known, a mesh axis that does not divide the dimension (together with the axes
  already chosen for it) is dropped, so the dimension falls back to replication instead of
  failing (e.g. 2 kv heads on tensor=4 are replicated over tensor).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from azr_jax.errors import UserError

Axes = tuple  # a tuple of logical axis names (str or None), one per array dimension


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh with the given axis sizes (in order); one size may be -1 for "all the rest"."""
    devices = list(jax.devices() if devices is None else devices)
    names = list(shape)
    sizes = [int(shape[n]) for n in names]
    if not names:
        raise UserError("mesh shape must name at least one axis, e.g. {'fsdp': -1}")
    if sizes.count(-1) > 1:
        raise UserError(f"mesh shape {dict(shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh shape {dict(shape)}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise UserError(
                f"mesh shape {dict(shape)}: {len(devices)} devices are not divisible by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise UserError(
            f"mesh shape {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available"
        )
    try:  # topology-aware device order on TPU/GPU slices
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # e.g. fake CPU devices or an unusual topology: plain order is correct
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, tuple(names))


def _axis_sizes(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
    return dict(mesh.shape) if isinstance(mesh, Mesh) else {k: int(v) for k, v in mesh.items()}


def logical_to_pspec(
    axes: Axes,
    rules: Mapping[str, Any],
    shape: Sequence[int] | None = None,
    mesh: Mesh | Mapping[str, int] | None = None,
) -> PartitionSpec:
    """Resolve logical axis names to a PartitionSpec (see the module docstring for the rules).

    Without `mesh`, mesh axes are taken as named (no size or divisibility checks). `mesh` may be
    a `Mesh` or a plain `{axis: size}` dict (enough for golden files and abstract shapes).
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
    sizes = None if mesh is None else _axis_sizes(mesh)
    used: set[str] = set()
    out = []
    for dim, name in enumerate(axes):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise UserError(f"no sharding rule for logical axis {name!r}; add it to mesh.rules")
        target = rules[name]
        candidates = [] if target is None else [target] if isinstance(target, str) else list(target)
        chosen: list[str] = []
        for ax in candidates:
            if ax in used:
                continue
            if sizes is not None:
                size = sizes.get(ax, 1)
                if size == 1:
                    continue
                if shape is not None and shape[dim] % (math.prod(sizes[a] for a in chosen) * size):
                    continue
            chosen.append(ax)
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    while out and out[-1] is None:  # canonical form: P('a') rather than P('a', None)
        out.pop()
    return PartitionSpec(*out)


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_pspecs(axes_tree: Any, rules: Mapping[str, Any], shapes_tree: Any = None,
                mesh: Mesh | Mapping[str, int] | None = None) -> Any:
    """PartitionSpecs for a tree of logical axes; `shapes_tree` (arrays or ShapeDtypeStructs,
    e.g. from `jax.eval_shape`) enables the divisibility fallback."""
    if shapes_tree is None:
        return jax.tree.map(lambda a: logical_to_pspec(a, rules, None, mesh), axes_tree, is_leaf=_is_axes)
    return jax.tree.map(
        lambda a, s: logical_to_pspec(a, rules, tuple(s.shape), mesh), axes_tree, shapes_tree,
        is_leaf=_is_axes,
    )


def tree_shardings(axes_tree: Any, mesh: Mesh, rules: Mapping[str, Any], shapes_tree: Any = None) -> Any:
    """NamedShardings for a tree of logical axes (pass `shapes_tree` for the replication fallback)."""
    pspecs = tree_pspecs(axes_tree, rules, shapes_tree, mesh)
    return jax.tree.map(lambda p: NamedSharding(mesh, p), pspecs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


# ----------------------------------------------------------------------------------------------
# Activation constraints
# ----------------------------------------------------------------------------------------------

_state = threading.local()


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules: Mapping[str, Any]):
    """Within this context, `constrain` pins activations to the mesh; read at trace time, so
    enter it before the first call of a jitted function."""
    previous = getattr(_state, "current", None)
    _state.current = (mesh, dict(rules))
    try:
        yield
    finally:
        _state.current = previous


def current_mesh_rules() -> tuple[Mesh, dict] | None:
    return getattr(_state, "current", None)


def constrain(x: jax.Array, logical_axes: Axes) -> jax.Array:
    """`with_sharding_constraint` by logical axes under `mesh_rules`; the identity outside."""
    current = current_mesh_rules()
    if current is None:
        return x
    mesh, rules = current
    pspec = logical_to_pspec(logical_axes, rules, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, pspec))
