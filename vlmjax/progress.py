"""Progress lines on the console: what a long step is doing, how fast, and when it will end.

    with progress.Task("compiling the train step"):      # "compiling the train step ..." then "... done (12.3 s)"
      compiled = lowered.compile()

    bar = progress.Counter("zero_shot: embedding images", total=10_000, unit="images")
    for batch in batches:
      ...
      bar.update(len(batch))                              # a line at most every `every` seconds:
    bar.close()                                           # "zero_shot: embedding images 2,048/10,000 (812 images/s, ETA 0:00:09)"

Nothing is printed for work that ends within `quiet` seconds except by `Task` (one line
before, so a user knows what the silence is). Only process 0 prints in a multi-process run
(`primary=False` silences the others). This module imports nothing of vlmjax and no jax.
"""

from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
  """H:MM:SS."""
  seconds = int(round(max(seconds, 0.0)))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _say(text: str) -> None:
  print(text, flush=True)


class Task:
  """A context manager that prints `label ...` on entry and `label: done (S s)` on exit (or
  `label: failed after S s` when an exception leaves it)."""

  def __init__(self, label: str, *, primary: bool = True):
    self.label, self.primary = label, primary
    self.start = 0.0

  def __enter__(self) -> "Task":
    self.start = time.perf_counter()
    if self.primary:
      _say(f"{self.label} ...")
    return self

  @property
  def seconds(self) -> float:
    return time.perf_counter() - self.start

  def __exit__(self, kind, value, tb) -> None:
    if self.primary:
      stopped = kind is not None and (issubclass(kind, KeyboardInterrupt) or getattr(kind, "is_interruption", False))
      outcome = "done" if kind is None else ("interrupted" if stopped else "failed")
      _say(f"{self.label}: {outcome} ({self.seconds:.1f} s)")


class Counter:
  """Counts items of a long loop and prints `label n/total (rate unit/s, ETA)` at most every
  `every` seconds once `quiet` seconds have passed; `close()` prints the total when any line was
  printed (or always with `final=True`)."""

  def __init__(self, label: str, *, total: int | None = None, unit: str = "items", every: float = 10.0,
               quiet: float = 3.0, primary: bool = True, stream=None):
    self.label, self.total, self.unit = label, total, unit
    self.every, self.quiet, self.primary = every, quiet, primary
    self.stream = stream
    self.count = 0
    self.start = self.last_print = time.perf_counter()
    self.printed = False

  def update(self, n: int = 1) -> None:
    self.count += n
    now = time.perf_counter()
    if now - self.start >= self.quiet and now - self.last_print >= (self.every if self.printed else 0.0):
      self.last_print = now
      self._print(now)

  def line(self, now: float | None = None) -> str:
    elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
    rate = self.count / elapsed
    done = f"{self.count:,}/{self.total:,}" if self.total else f"{self.count:,}"
    parts = [f"{rate:,.1f} {self.unit}/s"]
    if self.total and rate > 0:
      parts.append(f"ETA {duration((self.total - self.count) / rate)}")
    return f"{self.label} {done} ({', '.join(parts)})"

  def _print(self, now: float) -> None:
    self.printed = True
    self._emit(self.line(now))

  def _emit(self, text: str) -> None:
    if not self.primary:
      return
    if self.stream is not None:
      self.stream.write(text + "\n")
      self.stream.flush()
    else:
      _say(text)

  def close(self, final: bool = False) -> float:
    """Prints the closing count when a line was printed (or `final`); returns the seconds taken."""
    now = time.perf_counter()
    if final or self.printed:
      elapsed = now - self.start
      self._emit(f"{self.label}: {self.count:,} {self.unit} in {elapsed:.1f} s "
                 f"({self.count / max(elapsed, 1e-9):,.1f} {self.unit}/s)")
    return now - self.start


def stderr_counter(label: str, **kw) -> Counter:
  """A Counter that writes to stderr (for commands whose stdout is data, e.g. `vlmjax caption`)."""
  return Counter(label, stream=sys.stderr, **kw)
