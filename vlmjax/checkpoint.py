"""Checkpoints with orbax: train state + data iterator position, async, atomic, pruned by policy.

A checkpoint at step N holds `state` (step, parameters, optimiser state, each
array saved by the process that owns its shards) and `data` (the grain
iterator state as JSON). Orbax writes into a temporary directory and renames it
when complete, so the latest visible checkpoint is always whole.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
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


def has_checkpoints(directory: str) -> bool:
  """Whether `directory` holds a step folder (a checkpoint, whole or not)."""
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


class PreemptionWatcher:
  """Tells the train loop when to save and stop because the job is being preempted.

  With several processes, jax's preemption service (started by `jax.distributed`)
  catches SIGTERM on any host and all hosts agree on one step to save at. A single
  process catches SIGTERM itself and stops at the next step.
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self._signalled = False
    self._previous = None
    if not self.multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
