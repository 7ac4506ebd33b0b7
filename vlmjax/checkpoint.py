"""Checkpoints with orbax: train state + data iterator position, async, atomic, pruned by policy.

A checkpoint at step N holds `state` (step, parameters, optimiser state, each
array saved by the process that owns its shards) and `data` (the grain
iterator state as JSON). Orbax writes into a temporary directory and renames it
when complete, so the latest visible checkpoint is always whole.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
  def __init__(self, directory: str, cfg: ml_collections.ConfigDict):
    keep = [policies.LatestN(cfg.ckpt_keep)]
    if cfg.ckpt_keep_every:
      keep.append(policies.EveryNSteps(cfg.ckpt_keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=True, create=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts an async save; the previous one is finished first."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs); None if no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, out.data

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
