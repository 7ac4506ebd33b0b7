"""Sweep files: `get_sweep()` dicts expanded into named runs.

A sweep file defines `get_sweep()` returning a dict:

    base    "configs/coca_tiny.py:steps=60"    config spec every run starts from (required)
    seeds   [0, 1]                             each combination runs once per seed -> `seed` (required)
    grid    {"loss.caption_weight": [0.0, 1.0]}  cartesian product over keys (optional)
    zip     {"a.b": [1, 2], "c.d": [3, 4]}       values taken together, one combination per index (optional)
    fixed   {"log_every": 10}                  overrides shared by every run (optional)
    labels  {"loss.caption_weight": "lambda_cap"}  name of a key in run names; None leaves it out
                                               (optional; default: the key's last component)
    evals   {"zs": "zero_shot:synthetic:shapes:validation", "zs.num_examples": 512}
                                               after training, `vlmjax eval --config.evals.K=V ...` on
                                               the last checkpoint, for configs without evaluators (optional)

Runs are the product of grid combinations, zip rows and seeds (seeds innermost), named like
`lambda_cap=1.0,seed=1`. Each run trains in `WORKDIR/<name>` with its output in `output.txt` (and the trainer's own `log.txt`) and
its state (running | done | failed | interrupted, the error's last lines) in `status.json`. `vlmjax report`
(`sweeps/report.py`) turns a sweep's workdir into tables and plots.
"""

from __future__ import annotations

import dataclasses
import itertools

from vlmjax.config import load_python_file
from vlmjax.errors import ConfigError

SWEEP_KEYS = ("base", "seeds", "grid", "zip", "fixed", "labels", "evals")
NAME_MAX = 255  # bytes in one directory name (ext4, xfs, btrfs, APFS, NFS ...): the longest run name


@dataclasses.dataclass(frozen=True)
class Run:
  name: str                              # `lambda_cap=1.0,seed=1`: its directory under the workdir
  group: str                             # the name without the seed: runs that differ only in seed
  index: int                             # position in the sweep (report order)
  seed: int
  params: dict                           # label -> value of the swept keys
  overrides: tuple[tuple[str, str], ...]  # (dotted key, raw value): fixed, command line, swept, seed


@dataclasses.dataclass(frozen=True)
class Sweep:
  path: str
  base: str
  runs: tuple[Run, ...]
  swept: tuple[str, ...]                 # the keys the sweep varies (besides seed)
  n_fixed: int                           # leading overrides of each run that every run shares
  evals: tuple[tuple[str, str], ...] = ()  # `vlmjax eval` overrides after training, keys under `evals.`


def format_value(value) -> str:
  """The command-line text of an override value (parsed back by config.parse_value)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str):
    return value
  return repr(value)


def _values(where: str, key: str, values) -> list:
  if not isinstance(values, (list, tuple)) or not values:
    raise ConfigError(f"{where}[{key!r}] must be a non-empty list of values, got {values!r}")
  return list(values)


def _mapping(where: str, spec: dict, key: str) -> dict:
  value = spec.get(key, {})  # documented as optional in the module docstring: absent means none
  if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
    raise ConfigError(f"{where}: {key!r} must be a dict of dotted config keys, got {value!r}")
  return value


def _checked(spec: dict, where: str) -> tuple:
  """The parts of a valid sweep dict: (base, seeds, grid, zip, fixed, evals, label of each swept key)."""
  if not isinstance(spec, dict):
    raise ConfigError(f"{where}: get_sweep() must return a dict with keys {', '.join(SWEEP_KEYS)}, "
                      f"got {type(spec).__name__}")
  unknown = [k for k in spec if k not in SWEEP_KEYS]
  if unknown:
    raise ConfigError(f"{where}: unknown sweep key {unknown[0]!r}; valid keys: {', '.join(SWEEP_KEYS)}")
  for key in ("base", "seeds"):
    if key not in spec:
      raise ConfigError(f"{where}: sweep is missing required key {key!r}")
  base = spec["base"]
  if not isinstance(base, str) or not base:
    raise ConfigError(f"{where}: 'base' must be a config spec like 'configs/coca_tiny.py:steps=60', got {base!r}")
  seeds = _values(f"{where}: seeds", "seeds", spec["seeds"])
  if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
    raise ConfigError(f"{where}: 'seeds' must be distinct ints, got {seeds!r}")
  grid, zipped = _mapping(where, spec, "grid"), _mapping(where, spec, "zip")
  fixed, labels = _mapping(where, spec, "fixed"), _mapping(where, spec, "labels")
  evals = tuple((f"evals.{k}", format_value(v)) for k, v in _mapping(where, spec, "evals").items())
  grid = {k: _values(f"{where}: grid", k, v) for k, v in grid.items()}
  zipped = {k: _values(f"{where}: zip", k, v) for k, v in zipped.items()}
  lengths = {len(v) for v in zipped.values()}
  if len(lengths) > 1:
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in zipped.items())
    raise ConfigError(f"{where}: 'zip' lists must have equal lengths, got {sizes}")
  swept = list(grid) + list(zipped)
  for key in swept + list(fixed):
    if key == "seed":
      raise ConfigError(f"{where}: set seeds with the 'seeds' key, not as an override of 'seed'")
  clash = [k for k in swept if k in fixed or (k in grid and k in zipped)]
  if clash:
    raise ConfigError(f"{where}: key {clash[0]!r} appears in more than one of grid, zip, fixed")
  for key, label in labels.items():
    if key not in swept:
      raise ConfigError(f"{where}: labels names {key!r}, which is not swept (swept: {', '.join(swept) or 'none'})")
    if label is not None and (not isinstance(label, str) or not label or any(c in label for c in ",=/ ")):
      raise ConfigError(f"{where}: label for {key!r} must be None or a word without ',', '=', '/' or spaces, "
                        f"got {label!r}")
  label_of = {k: labels[k] if k in labels else k.rsplit(".", 1)[-1] for k in swept}
  return base, seeds, grid, zipped, fixed, evals, label_of


def _check_name(name: str, index: int, seen: dict, where: str) -> None:
  """A run's name is its directory: not hidden, within a directory name's size, unique."""
  if name.startswith("."):
    raise ConfigError(f"{where}: run name {name!r} starts with '.', a hidden directory; relabel the key")
  size = len(name.encode())
  if size > NAME_MAX:
    longest = max(name.split(","), key=lambda part: len(part.encode()))
    raise ConfigError(f"{where}: run {index + 1} ({name[:40]}...) has a {size}-byte name, over the {NAME_MAX}"
                      f"-byte limit of a directory name; its part {longest[:40]}... is {len(longest.encode())} "
                      "bytes: give that key a shorter label (None leaves it out of names) or shorten the value")
  if name in seen:
    raise ConfigError(f"{where}: two runs are both named {name!r}; give labels to the keys left out of names")


def expand(spec: dict, where: str = "sweep") -> Sweep:
  """Validates a sweep dict and returns its runs."""
  base, seeds, grid, zipped, fixed, evals, label_of = _checked(spec, where)
  swept = list(label_of)
  zip_rows = [dict(zip(zipped, row)) for row in zip(*zipped.values())] or [{}]
  combos = [dict(zip(grid, g)) | z for g in itertools.product(*grid.values()) for z in zip_rows]
  fixed_overrides = tuple((k, format_value(v)) for k, v in fixed.items())
  runs, seen = [], {}
  for combo in combos:
    params = {label_of[k]: v for k, v in combo.items() if label_of[k] is not None}
    # Values as names: a path's '/' would nest directories, so it becomes '_'.
    group = ",".join(f"{label}={format_value(v).replace('/', '_').replace(' ', '')}" for label, v in params.items())
    for seed in seeds:
      name = ",".join(filter(None, [group, f"seed={seed}"]))
      _check_name(name, len(runs), seen, where)
      seen[name] = True
      overrides = fixed_overrides + tuple((k, format_value(v)) for k, v in combo.items()) + (("seed", str(seed)),)
      runs.append(Run(name, group, len(runs), seed, params, overrides))
  return Sweep(where, base, tuple(runs), tuple(swept), len(fixed_overrides), evals)


def load_sweep(path: str) -> Sweep:
  """Loads a sweep file (a module with `get_sweep()`) and expands it."""
  return expand(load_python_file(path, "sweep", "get_sweep")(), where=path)


def with_extra(sweep: Sweep, extra: tuple[tuple[str, str], ...]) -> Sweep:
  """Adds command-line overrides to every run: after the sweep's fixed ones, before the swept ones."""
  for key, _ in extra:
    if key == "seed" or key in sweep.swept:
      raise ConfigError(f"--config.{key} on the command line would change {key!r}, which the sweep varies")
  n = sweep.n_fixed
  runs = tuple(dataclasses.replace(r, overrides=r.overrides[:n] + extra + r.overrides[n:]) for r in sweep.runs)
  return dataclasses.replace(sweep, runs=runs, n_fixed=n + len(extra))


def select(sweep: Sweep, only: list[str] | None) -> Sweep:
  if not only:
    return sweep
  names = [r.name for r in sweep.runs]
  for name in only:
    if name not in names:
      raise ConfigError(f"--only {name!r} is not a run of {sweep.path}; runs: {', '.join(names)}")
  return dataclasses.replace(sweep, runs=tuple(r for r in sweep.runs if r.name in only))
