"""The user-error family: every mistake a user can fix is one line on stderr, never a traceback.

  UserError          the base: `vlmjax` prints `vlmjax: error: <message>` and exits 2
    ConfigError      a config file, config argument, override or command-line flag
    DataError        a data spec, or data that cannot be used (no files, undecodable shards)
    CheckpointError  a checkpoint or workdir that cannot be written or read (disk full,
                     permissions): `vlmjax train` exits 1 for a failed save

`one_line(e)` turns a library's exception (orbax, grain, XLA: messages pages long) into
the one line such an error quotes. This module imports nothing of vlmjax: every layer may use it.
"""

from __future__ import annotations


class UserError(ValueError):
  """A mistake the user can fix; its message is one line saying what, where, and what would be valid."""


class ConfigError(UserError):
  """A user error in a config file, config argument, override or flag (one line)."""


class DataError(UserError):
  """A user error in a data spec, or data that cannot be used (one line)."""


class CheckpointError(UserError):
  """A checkpoint that cannot be saved or read (disk full, permissions, a file in the way): one line."""


def one_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, for errors from libraries whose messages span pages."""
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else ''}"
