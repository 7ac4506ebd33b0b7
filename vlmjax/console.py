"""A copy of the console in a file: `Tee` repeats what the process prints (stdout and stderr) into
`WORKDIR/log.txt`, the run's record of what its user saw.

    with console.Tee() as tee:       # before the workdir exists: lines are held (up to a limit)
      ...
      tee.attach("runs/x/log.txt")   # now: the held lines, then every later one, appended
      ...                            # an error printed before the `with` ends is in the file too

`Tee.active()` is the innermost one open, so code that knows the workdir (`train.train`) can attach
the one `vlmjax train` opened around the whole command. Output written by C code straight to the
file descriptors (XLA's own logging) is not copied. This module imports nothing of vlmjax.
"""

from __future__ import annotations

import sys
import time

HELD_LIMIT = 1 << 20  # characters held before `attach`; more are dropped (and counted in the file)


class _Stream:
  """Writes to the real stream and to the tee; anything else (fileno, isatty, encoding) is the real one's."""

  def __init__(self, real, tee: "Tee"):
    self._real, self._tee = real, tee

  def write(self, text: str) -> int:
    n = self._real.write(text)
    self._tee.copy(text)
    return n

  def flush(self) -> None:
    self._real.flush()

  def __getattr__(self, name):
    return getattr(self._real, name)


class Tee:
  _stack: list["Tee"] = []

  def __init__(self):
    self.held: list[str] = []
    self.held_chars = self.dropped = 0
    self.file = None
    self._saved = None

  @classmethod
  def active(cls) -> "Tee | None":
    return cls._stack[-1] if cls._stack else None

  def __enter__(self) -> "Tee":
    self._saved = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Stream(sys.stdout, self), _Stream(sys.stderr, self)
    Tee._stack.append(self)
    return self

  def __exit__(self, *exc) -> None:
    if Tee._stack and Tee._stack[-1] is self:
      Tee._stack.pop()
    sys.stdout, sys.stderr = self._saved
    self.close()

  def copy(self, text: str) -> None:
    if self.file is not None:
      try:
        self.file.write(text)
        self.file.flush()
      except (OSError, ValueError):  # a full disk or a closed file must not stop the run
        self.file = None
    elif self.held_chars < HELD_LIMIT:
      self.held.append(text)
      self.held_chars += len(text)
    else:
      self.dropped += len(text)

  def attach(self, path: str, header: str = "") -> None:
    """From now on, appends to `path` (after `header` and the lines held so far)."""
    if self.file is not None:
      return
    try:
      self.file = open(path, "a", encoding="utf-8", errors="replace")
    except OSError as e:
      print(f"cannot write the console log {path}: {e.strerror or e}; going on without it", flush=True)
      return
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    self.file.write(f"==== {stamp} {header}\n" if header else f"==== {stamp}\n")
    if self.dropped:
      self.file.write(f"[{self.dropped} characters of early output not kept]\n")
    self.file.write("".join(self.held))
    self.file.flush()
    self.held, self.held_chars = [], 0

  def close(self) -> None:
    if self.file is not None:
      try:
        self.file.close()
      except OSError:  # a full disk: what could be written was
        pass
      self.file = None
