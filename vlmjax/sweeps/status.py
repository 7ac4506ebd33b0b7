"""The per-run status file of a sweep (`WORKDIR/<run>/status.json`): the one owner of its format; and
for runs trained outside a sweep (no status.json), their names, groups and states (`name_runs`,
`state_without_sweep`) from their config.json and metrics.

Written by the sweep runner (atomically: a temporary file renamed over it), read by the runner
to skip or resume runs and by the report. Every status holds `KEYS`; the runner adds what it ran
(base, overrides, evals, command), `trained`, timings, and for a failed run its error and last
log lines.
"""

from __future__ import annotations

import collections
import json
import os
import re

from vlmjax.errors import ConfigError

FILE = "status.json"
KEYS = ("group", "index", "seed", "state")
NOISE_KEYS = ("name", "wandb.name", "wandb.id", "workdir")  # differ between runs without making them differ
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


def flatten(cfg: dict, prefix: str = "") -> dict:
  """A nested config.json as `{"optim.lr": 0.001, ...}`."""
  out = {}
  for key, value in cfg.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differing_keys(flat_configs: list[dict]) -> list[str]:
  """The keys, in the first config's order, that every config holds (an older config.json may lack
  newer keys) with more than one value among them; `NOISE_KEYS` left out."""
  if len(flat_configs) < 2:
    return []
  return [k for k in flat_configs[0] if k not in NOISE_KEYS and all(k in c for c in flat_configs)
          and len({json.dumps(c[k], sort_keys=True) for c in flat_configs}) > 1]


def _value(value) -> str:
  return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _without_seed(name: str) -> str:
  return re.sub(r"(^|,)seed=-?\d+", "", name).strip(",")


def name_runs(configs: dict[str, dict]) -> dict[str, tuple[str, str]]:
  """(name, group) of each run trained outside a sweep, by directory, from its config.json ({} when
  none): named by the keys whose values differ between the runs (`optim.lr=0.001,seed=0`), grouped
  by those other than `seed`. The runs keep their directory names when no key but `seed` differs
  (one group: the names without `seed=` when they agree), when their keys name them alike, and without
  a config.json (grouped by the name without `seed=`)."""
  out = {d: (d, _without_seed(d)) for d in configs}
  flat = {d: flatten(c) for d, c in configs.items() if c}
  keys = differing_keys(list(flat.values()))
  other = [k for k in keys if k != "seed"]
  if not other:
    common = {_without_seed(d) for d in flat}
    group = common.pop() if len(common) == 1 else ""
    return {**out, **{d: (d, group) for d in flat}}
  for d, c in flat.items():
    group = ",".join(f"{k}={_value(c[k])}" for k in other)
    out[d] = (group + (f",seed={_value(c['seed'])}" if "seed" in keys else ""), group)
  alike = collections.Counter(out[d][0] for d in flat)
  return {d: (d, group) if d in flat and alike[name] > 1 else (name, group) for d, (name, group) in out.items()}


def state_without_sweep(last_step: int | None, total_steps) -> str:
  """A run trained outside a sweep: done when it logged up to its total_steps; stopped when not
  (killed, or still training); unknown without a total_steps (no config.json)."""
  if not isinstance(total_steps, int):
    return "unknown"
  return "done" if last_step is not None and last_step >= total_steps else "stopped"
