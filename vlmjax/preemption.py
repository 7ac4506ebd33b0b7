"""Preemption and Ctrl-C: when the train loop saves and stops.

SIGTERM (a scheduler's preemption notice) and the first Ctrl-C ask the loop to save at the
next step and exit (143 or 130); a second Ctrl-C stops at once, unsaved. With several
processes, jax's preemption service (started by `jax.distributed`) agrees on one step.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
  """SIGTERM arrived inside `PreemptionWatcher.interruptible()`."""


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
    self._catching = not self.multi and threading.current_thread() is threading.main_thread()
    if self._catching:
      self._previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  def _on_signal(self, signum, frame) -> None:
    del frame
    if signum == signal.SIGINT and self._signalled:  # a second Ctrl-C: stop now, unsaved
      raise KeyboardInterrupt
    self._signalled = True
    self.interrupted = self.interrupted or signum == signal.SIGINT
    if self._interrupt:
      self._interrupt = False
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
    finally:
      self._interrupt = False

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if self._catching:
      for s, handler in self._previous.items():
        signal.signal(s, handler)
      self._catching = False
