"""The per-run status file of a sweep (`WORKDIR/<run>/status.json`): the one owner of its format.

Written by the sweep runner (atomically: a temporary file renamed over it), read by the runner
to skip or resume runs and by the report. Every status holds `KEYS`; the runner adds what it ran
(base, overrides, evals, command), `trained`, timings, and for a failed run its error and last
log lines.
"""

from __future__ import annotations

import json
import os

from vlmjax.errors import ConfigError

FILE = "status.json"
KEYS = ("group", "index", "seed", "state")
FIX = "delete it to run that run again (`vlmjax sweep` resumes it from its last checkpoint)"


def load_json(path: str, fix: str) -> dict | None:
  """The JSON object in `path` (None when there is no such file); a ConfigError naming the file and
  `fix` (what to do about it) when it is cut short, corrupt or not an object."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, "rb") as f:
      value = json.loads(f.read())
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ConfigError(f"{path} is cut short or corrupt ({str(e).splitlines()[0]}); {fix}") from None
  if not isinstance(value, dict):
    raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
  return value


def read(rundir: str) -> dict | None:
  """The run's status.json (None when it has none); a one-line ConfigError when it is corrupt."""
  path = os.path.join(rundir, FILE)
  status = load_json(path, FIX)
  if status is not None and "state" not in status:
    raise ConfigError(f"{path} has no 'state'; {FIX}")
  return status


def check_keys(status: dict, path: str) -> None:
  """A one-line ConfigError unless `status` (read from `path`) holds every key of `KEYS`."""
  missing = [k for k in KEYS if k not in status]
  if missing:
    raise ConfigError(f"{path} lacks {', '.join(missing)} (a sweep's status.json has "
                      f"{', '.join(KEYS)}); {FIX}")


def write(rundir: str, status: dict) -> None:
  tmp = os.path.join(rundir, FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(json.dumps(status, indent=2) + "\n")
  os.replace(tmp, os.path.join(rundir, FILE))
