"""Preemption and Ctrl-C: when the train loop saves and stops.

SIGTERM (a scheduler's preemption notice) and the first Ctrl-C ask the loop to save at the
next step and exit (143 or 130); a second Ctrl-C stops at once, unsaved. Before the first step
(loading, restoring, compiling) either stops the run at once: there is nothing new to save. With
several processes, jax's preemption service (started by `jax.distributed`) agrees on one step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """SIGTERM or Ctrl-C arrived inside `PreemptionWatcher.interruptible()`."""
  is_interruption = True  # `progress.Task` reports "interrupted", not "failed"


class PreemptionWatcher:
  """Tells the train loop when to save and stop because the job is being preempted.

  With several processes, jax's preemption service (started by `jax.distributed`)
  catches SIGTERM on any host and all hosts agree on one step to save at. A single
  process catches SIGTERM itself and stops at the next step, or at once inside
  `interruptible()` (an evaluation can outlast the grace period before SIGKILL). It
  treats the first Ctrl-C (SIGINT) the same way (`interrupted`); a second one stops at once.
  """

  def __init__(self):
    self.multi = jax.process_count() > 1
    self._signalled = False
    self.interrupted = False  # the stop came from Ctrl-C, not SIGTERM
    self._interrupt = False
    self._polling = False  # inside `startup()`
    self._catching = not self.multi and threading.current_thread() is threading.main_thread()
    if self._catching:
      self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  def _on_signal(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self._signalled:  # a second Ctrl-C: stop now, unsaved
      # At once, whatever runs: an orbax save in flight stays a temporary folder, never restored.
      sys.stdout.flush()
      sys.stderr.write("vlmjax: interrupted again: stopped at once; a save in progress is not kept, the last "
                       "complete checkpoint is\n")
      sys.stderr.flush()
      os._exit(130)
    self._signalled = True
    self.interrupted = self.interrupted or signum == signal.SIGINT
    if self._interrupt:
      raise Preempted()

  @contextlib.contextmanager
  def interruptible(self):
    """Within it, SIGTERM raises `Preempted` at once (one process only: several hosts can agree
    on a step to stop at only at the train loop's sync points, so they finish the block)."""
    if not self._catching:  # multi-host, or not the main thread
      yield
      return
    if self._signalled:
      raise Preempted()
    self._interrupt = True
    try:
      yield
      self.check()  # a signal whose Preempted some library code caught and dropped
    finally:
      self._interrupt = False

  def check(self) -> None:
    """Inside `interruptible()` or `startup()`: raises `Preempted` if a signal has come (for code
    between phases; library code may also have caught the exception the handler raised)."""
    if (self._interrupt or self._polling) and self._signalled:
      raise Preempted()

  @contextlib.contextmanager
  def startup(self):
    """Before the first step: a signal only sets the flag (raised from the handler, the exception
    could land inside threading's or orbax's internals); `check()` between phases and `call`'s wait
    (every 0.1 s) raise `Preempted` from this thread. Phases with effects on disk (the workdir's
    files) are thus never cut in the middle, and the heavy ones, with none, go through `call`."""
    if not self._catching:
      yield
      return
    self._polling = True
    try:
      self.check()
      yield
      self.check()
    finally:
      self._polling = False

  def call(self, fn: Callable[[], Any]) -> Any:
    """`fn()` run in a helper thread while this one waits in short steps, so that a signal is handled
    within a fraction of a second even while `fn` is inside C++ (XLA compiling for minutes). Inside
    `startup()`, a signal then raises `Preempted` here and `fn`, which must leave the disk whole at every
    moment (no writes, or atomic renames only), is left to finish in the background (a daemon thread,
    abandoned: `vlmjax train` ends with os._exit)."""
    if not self._catching:
      return fn()
    box: dict[str, Any] = {}

    def run():
      try:
        box["value"] = fn()
      except BaseException as e:  # noqa: BLE001 -- handed to the waiting thread
        box["error"] = e
    worker = threading.Thread(target=run, name="vlmjax-startup", daemon=True)
    worker.start()
    while worker.is_alive():
      worker.join(0.1)
      self.check()
    if "error" in box:
      raise box["error"]
    return box["value"]

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if self._catching:
      for s, handler in self._previous.items():
        signal.signal(s, handler)
      self._catching = False
