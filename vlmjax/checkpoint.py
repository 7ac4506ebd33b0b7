"""Checkpoints with orbax: train state + data iterator position, async, pruned by policy.

A checkpoint at step N holds `state` (step, parameters, optimiser state, each
array saved by the process that owns its shards) and `data` (the grain
iterator state as JSON; with several processes, every process's own, gathered
to the one that writes it, since each host reads its own part of the data).
Orbax writes into a temporary directory and renames it when complete, so on a
local disk or POSIX filesystem (where a rename is atomic) the latest visible
checkpoint is always whole; on gcsfuse the rename copies object by object (see
README, "Crashes"). A run that starts removes the temporary folders of saves a
kill cut short (`remove_unfinished`). A step that cannot be read is moved aside (`set_aside`),
never deleted. While a Checkpointer is open, what orbax and tensorstore print below our own lines
(absl log records, tracebacks of their threads) goes to the run's log.txt only (`quiet_libraries`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from vlmjax import console
from vlmjax.errors import CheckpointError, ConfigError, one_line


class SaveFailed(CheckpointError):
  """A save failed (disk full, permissions, a file where the checkpoint folder goes): `vlmjax train`
  exits 1 at once, keeping the last whole checkpoint."""


class Checkpointer:
  def __init__(self, directory: str, cfg: ml_collections.ConfigDict):
    keep = [policies.LatestN(cfg.ckpt_keep)]
    if cfg.ckpt_keep_every:
      keep.append(policies.EveryNSteps(cfg.ckpt_keep_every))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=True, create=True)
    self.directory = os.path.abspath(directory)
    self.failed = False
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
    except OSError as e:
      raise CheckpointError(f"cannot keep checkpoints in {self.directory}: {e.strerror or e}") from None
    quiet_libraries(True)

  def remove_unfinished(self) -> None:
    """Deletes the temporary folders of saves a kill cut short (`<step>.orbax-checkpoint-tmp-*`,
    as big as a checkpoint). For the train loop's start only: while a run saves, its temporary
    folder is live (`vlmjax eval` on a training workdir must leave it)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    stale = sorted(name for name in os.listdir(self.directory) if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", name))
    for name in stale:
      shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    if stale:
      print(f"removed {len(stale)} unfinished checkpoint folder(s) in {self.directory}: {', '.join(stale)}")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    """The steps on disk, newest first."""
    return sorted(self.manager.all_steps(), reverse=True)

  def set_aside(self, step: int) -> str:
    """Moves step `step`'s folder to WORKDIR/checkpoints.corrupt/<step>-<UTC time> (never deletes it) and
    forgets it; returns the new path. A CheckpointError (one line) if it cannot be moved. With several
    processes, every one calls it: the primary moves the folder, all then agree on the outcome."""
    source = os.path.join(self.directory, str(step))
    aside = os.path.join(os.path.dirname(self.directory), "checkpoints.corrupt")
    stamp = os.path.join(aside, f"{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    target, n, error = stamp, 1, ""
    if jax.process_index() == 0:
      while os.path.exists(target):
        target, n = f"{stamp}.{n}", n + 1
      try:
        os.makedirs(aside, exist_ok=True)
        os.rename(source, target)
      except OSError as e:
        error = f"cannot move the unreadable checkpoint {source} to {target}: {e.strerror or e}"
    if jax.process_count() > 1:
      failed = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
      error = error or (f"the primary process could not move the unreadable checkpoint {source}" if failed else "")
    if error:
      raise CheckpointError(f"{error}; move or remove it by hand to resume from an earlier step")
    self.manager.reload()
    return target

  def check(self) -> None:
    """Raises, in one line, the error of a background save that failed (disk full, permissions)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 -- orbax re-raises the writer thread's error as it was
      self._fail(e, "an earlier save")

  def _fail(self, e: Exception, what: str):
    self.failed = True
    raise SaveFailed(f"checkpoint {what} to {self.directory} failed: {one_line(e)}; "
                          "the last whole checkpoint is kept") from None

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts an async save; the previous one is finished first (and a failure of it reported
    before anything of this one starts)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._fail(e, "an earlier save")
    self.check()
    if jax.process_count() > 1:  # JsonSave writes the primary process's item only
      data_state = {"per_process": _gather_json(data_state)}
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    except Exception as e:  # noqa: BLE001
      self._fail(e, f"save at step {step}")

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """Restores onto the shardings in `abstract_state` (ShapeDtypeStructs); None if no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, own_data_state(out.data, step)

  def restore_params(self, abstract_state: Any, step: int) -> Any:
    """The parameters of the checkpoint at `step`, onto the shardings in `abstract_state.params`;
    the optimiser state (twice the parameters' size with Adam) and the data position are not read."""
    return self.restore_part({"params": abstract_state.params}, step)["params"]

  def restore_part(self, item: dict, step: int) -> dict:
    """Part of the state of the checkpoint at `step`: `item` is a nested dict of ShapeDtypeStructs
    (with shardings) naming the subtrees to read by their keys in the state (`{"params": ...}`, or
    `{"opt_state": {"ema": ...}}` for a field of a NamedTuple); nothing else is read."""
    with ocp.PyTreeCheckpointer() as reader:  # the manager's handler for `state` restores whole trees only
      return reader.restore(os.path.join(self.directory, str(step), "state"), args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))

  def wait(self) -> None:
    """Until the last save is complete; a failure of it raised as one line (`SaveFailed`)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 -- orbax re-raises the writer's error (a full disk: ValueError)
      self._fail(e, "save (the last one)")
    self.check()

  def close(self) -> None:
    if self.failed:  # waiting on a failed writer only times out; it may still log (to log.txt)
      return
    try:
      self.wait()
      self.manager.close()
    finally:
      quiet_libraries(False)


def _gather_json(state: dict) -> list[dict]:
  """Every process's JSON-able `state`, in process order, on every process."""
  raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [json.loads(bytes(rows[i, :sizes[i]]).decode()) for i in range(len(sizes))]


def own_data_state(data: dict, step: int) -> dict:
  """This process's data position from a checkpoint's `data` item (one process's or all)."""
  if "per_process" not in data:
    if jax.process_count() > 1:
      raise ConfigError(f"step {step}'s data position was saved by 1 process; this run has "
                       f"{jax.process_count()}: resume with 1 process")
    return data
  per = data["per_process"]
  if len(per) != jax.process_count():
    raise ConfigError(f"step {step}'s data position was saved by {len(per)} processes; this run has "
                     f"{jax.process_count()}: resume with {len(per)} (each host reads its own part of the data)")
  return per[jax.process_index()]


def has_checkpoints(directory: str) -> bool:
  """Whether `directory` holds a step folder (a checkpoint, whole or not)."""
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# Library output below our one-line messages: it goes to the run's log.txt (the active console.Tee's
# file, held until it is attached), not the console. Orbax (and grain) log through absl's logger.
LIBRARY_LOGGERS = ("absl", "orbax", "tensorstore", "asyncio")  # asyncio: orbax's abandoned tasks


def _to_log_file(text: str) -> None:
  """`text` to the active Tee's file only (log.txt); with no Tee open, to stderr as before."""
  tee = console.Tee.active()
  if tee is not None:
    tee.copy(text)
  else:
    sys.stderr.write(text)


class _LogFileHandler(logging.Handler):
  def emit(self, record: logging.LogRecord) -> None:
    try:
      _to_log_file(self.format(record) + "\n")
    except Exception:  # noqa: BLE001 -- logging must never stop the run
      self.handleError(record)


def _from_libraries(tb) -> bool:
  """Whether a traceback passes through orbax, tensorstore or asyncio's thread-safe callbacks only
  (tensorstore's futures completing after orbax closed its event loop: `Event loop is closed`)."""
  files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb)]
  return bool(files) and (any(f"{os.sep}orbax{os.sep}" in f or f"{os.sep}tensorstore{os.sep}" in f for f in files)
                          or all(f"{os.sep}asyncio{os.sep}" in f for f in files))


class _Quiet:
  depth = 0
  lock = threading.Lock()
  handler = _LogFileHandler()
  handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
  saved: dict = {}


def _unraisablehook(args) -> None:  # what C code (tensorstore's callbacks) reports errors through
  if _from_libraries(args.exc_traceback):
    where = f"{args.err_msg or 'Exception ignored in'}: {args.object!r}\n" if args.object is not None else ""
    _to_log_file(where + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
  else:
    _Quiet.saved["unraisable"](args)


def _threading_excepthook(args) -> None:
  if _from_libraries(args.exc_traceback):
    _to_log_file(f"exception in thread {args.thread.name if args.thread else '?'}:\n"
                 + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
  else:
    _Quiet.saved["threading"](args)


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:
  if category is RuntimeWarning and "was never awaited" in str(message):  # orbax's coroutines, cancelled
    _to_log_file(warnings.formatwarning(message, category, filename, lineno, line))
  else:
    _Quiet.saved["showwarning"](message, category, filename, lineno, file, line)


def quiet_libraries(on: bool) -> None:
  """Routes orbax's, absl's and tensorstore's log records, their threads' tracebacks and the warnings
  of their abandoned coroutines to log.txt only (`on`), or back (counted: the last `off` restores)."""
  with _Quiet.lock:
    if not on and _Quiet.depth == 0:
      return
    _Quiet.depth += 1 if on else -1
    if on and _Quiet.depth == 1:
      _Quiet.saved = {"unraisable": sys.unraisablehook, "threading": threading.excepthook,
                      "showwarning": warnings.showwarning, "loggers": {}}
      for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        _Quiet.saved["loggers"][name] = logger.propagate
        logger.addHandler(_Quiet.handler)
        logger.propagate = False
      sys.unraisablehook, threading.excepthook, warnings.showwarning = _unraisablehook, _threading_excepthook, _showwarning
    elif not on and _Quiet.depth == 0:
      for name, propagate in _Quiet.saved["loggers"].items():
        logging.getLogger(name).removeHandler(_Quiet.handler)
        logging.getLogger(name).propagate = propagate
      if sys.unraisablehook is _unraisablehook:  # unless replaced since
        sys.unraisablehook = _Quiet.saved["unraisable"]
      if threading.excepthook is _threading_excepthook:
        threading.excepthook = _Quiet.saved["threading"]
      if warnings.showwarning is _showwarning:
        warnings.showwarning = _Quiet.saved["showwarning"]
