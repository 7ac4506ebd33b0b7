"""Meshes and shardings: the mesh from `cfg.mesh`, logical-axis rules to `PartitionSpec`s.

Model code names logical axes only (`embed`, `mlp`, `heads`, `vocab`, ...);
`cfg.mesh.rules` maps each to a mesh axis (`data`, `fsdp`, `tensor`), a tuple
of them, or None (replicated). A dimension that an axis does not divide is
replicated on it rather than padded.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from vlmjax.config import MESH_AXES
from vlmjax.errors import ConfigError


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  sizes = [cfg[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, "
                      f"but there are {num_devices}; set one axis to -1 to use the rest")
  return tuple(sizes)


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _mesh_axes(rule) -> tuple[str, ...]:
  if rule is None:
    return ()
  return (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], rules: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh) -> P:
  """PartitionSpec for an array whose dimensions carry logical names `axes`."""
  used, spec = set(), []
  for name, dim in zip(axes, shape):
    if name is not None and name not in rules:
      raise ConfigError(f"mesh.rules has no entry for logical axis {name!r}; valid: {', '.join(rules.keys())}")
    mesh_axes = tuple(a for a in _mesh_axes(rules[name] if name else None) if a not in used)
    size = math.prod(mesh.shape[a] for a in mesh_axes)
    if not mesh_axes or dim % size:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def param_shardings(state: nnx.State, rules: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
  """A pure dict (like `nnx.to_pure_dict(state)`) of NamedShardings from each Variable's `axes`."""
  out: dict = {}
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
    if len(axes) != len(var.shape):
      raise ValueError(f"parameter {'/'.join(map(str, path))} has shape {var.shape} but axes {axes}")
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = NamedSharding(mesh, logical_to_spec(axes, var.shape, rules, mesh))
  return out


def batch_axes(rules: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over."""
  return _mesh_axes(rules.batch)


def batch_sharding(mesh: jax.sharding.Mesh, rules: ml_collections.ConfigDict) -> NamedSharding:
  """Leading (batch) dimension split over the mesh axes that `rules.batch` names."""
  axes = batch_axes(rules)
  return NamedSharding(mesh, P(axes if len(axes) != 1 else axes[0]))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
