"""Ablation sweeps: expand an `experiments/` sweep file into runs, run them, record each run's status.

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
`lambda_cap=1.0,seed=1`. Each run trains in `WORKDIR/<name>` with its output in `log.txt` and
its state (running | done | failed | interrupted, the error's last lines) in `status.json`. `vlmjax report`
(vlmjax/report.py) turns a sweep's workdir into tables and plots.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from vlmjax.config import load_python_file
from vlmjax.errors import ConfigError, UserError
from vlmjax.report import STATUS_FIX, load_json

SWEEP_KEYS = ("base", "seeds", "grid", "zip", "fixed", "labels", "evals")
STATUS = "status.json"
LOG = "log.txt"
TRAIN_CMD = (sys.executable, "-m", "vlmjax.cli", "train")
EVAL_CMD = (sys.executable, "-m", "vlmjax.cli", "eval")
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


def expand(spec: dict, where: str = "sweep") -> Sweep:
  """Validates a sweep dict and returns its runs."""
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
      if name.startswith("."):
        raise ConfigError(f"{where}: run name {name!r} starts with '.', a hidden directory; relabel the key")
      size = len(name.encode())
      if size > NAME_MAX:
        longest = max(name.split(","), key=lambda part: len(part.encode()))
        raise ConfigError(f"{where}: run {len(runs) + 1} ({name[:40]}...) has a {size}-byte name, over the {NAME_MAX}"
                          f"-byte limit of a directory name; its part {longest[:40]}... is {len(longest.encode())} "
                          "bytes: give that key a shorter label (None leaves it out of names) or shorten the value")
      if name in seen:
        raise ConfigError(f"{where}: two runs are both named {name!r}; give labels to the keys left out of names")
      seen[name] = True
      overrides = fixed_overrides + tuple((k, format_value(v)) for k, v in combo.items()) + (("seed", str(seed)),)
      runs.append(Run(name, group, len(runs), seed, params, overrides))
  return Sweep(where, base, tuple(runs), tuple(swept), len(fixed_overrides), evals)


def load_sweep(path: str) -> Sweep:
  """Loads a sweep file (a module with `get_sweep()`) and expands it."""
  return expand(load_python_file(path, "sweep", "get_sweep")(), where=path)


def check_configs(sweep: Sweep) -> None:
  """Loads every run's config, applies the sweep's `evals` as `vlmjax eval` will after training
  (`evals.commands.load_config`), and validates the evaluators, so a bad key or value, in
  training or in evaluation, fails before anything trains."""
  from vlmjax import config, evals
  from vlmjax.evals import registry
  for run in sweep.runs:
    try:
      cfg = config.load(sweep.base, run.overrides)
      if sweep.evals:
        registry.apply_overrides(cfg, sweep.evals, where="sweep evals")
      evals.prepare_all(cfg)
    except UserError as e:
      raise type(e)(f"run {run.name}: {e}") from None


def with_extra(sweep: Sweep, extra: tuple[tuple[str, str], ...]) -> Sweep:
  """Adds command-line overrides to every run: after the sweep's fixed ones, before the swept ones."""
  for key, _ in extra:
    if key == "seed" or key in sweep.swept:
      raise ConfigError(f"--config.{key} on the command line would change {key!r}, which the sweep varies")
  n = sweep.n_fixed
  runs = tuple(dataclasses.replace(r, overrides=r.overrides[:n] + extra + r.overrides[n:]) for r in sweep.runs)
  return dataclasses.replace(sweep, runs=runs, n_fixed=n + len(extra))


def read_status(rundir: str) -> dict | None:
  """The run's status.json (None when it has none); a one-line ConfigError when it is corrupt."""
  path = os.path.join(rundir, STATUS)
  status = load_json(path, STATUS_FIX)
  if status is not None and "state" not in status:
    raise ConfigError(f"{path} has no 'state'; {STATUS_FIX}")
  return status


def _write_status(rundir: str, status: dict) -> None:
  tmp = os.path.join(rundir, STATUS + ".tmp")
  with open(tmp, "w") as f:
    f.write(json.dumps(status, indent=2) + "\n")
  os.replace(tmp, os.path.join(rundir, STATUS))


def state_of(sweep: Sweep, run: Run, workdir: str) -> str:
  """new | done | failed | interrupted | running (or killed) | changed (done with other settings)."""
  status = read_status(os.path.join(workdir, run.name))
  if status is None:
    return "new"
  if status["state"] == "done" and not (_same_training(sweep, run, status) and
                                        status["evals"] == [list(e) for e in sweep.evals]):
    return "changed"
  return status["state"]


def _same_training(sweep: Sweep, run: Run, status: dict | None) -> bool:
  """Whether `status` records this run's training as finished, with the same base and overrides."""
  return bool(status and status["trained"] and status["base"] == sweep.base
              and status["overrides"] == [list(o) for o in run.overrides])


def train_argv(base: str, rundir: str, run: Run, train_cmd=TRAIN_CMD) -> list[str]:
  return [*train_cmd, "--config", base, "--workdir", rundir, *(f"--config.{k}={v}" for k, v in run.overrides)]


def eval_argv(sweep: Sweep, rundir: str, eval_cmd=EVAL_CMD) -> list[str]:
  return [*eval_cmd, "--workdir", rundir, *(f"--config.{k}={v}" for k, v in sweep.evals)]


def _tail(path: str, offset: int, n: int = 20) -> list[str]:
  with open(path, errors="replace") as f:
    f.seek(offset)
    lines = [line.rstrip() for line in f.read().splitlines() if line.strip()]
  return lines[-n:]


class Stopper:
  """The processes a sweep has running, and its stop switch: once `stop()` has run, every running
  process has been sent SIGTERM and no new one starts (the check and the start share a lock)."""

  def __init__(self):
    self._lock, self._procs, self.stopped = threading.Lock(), {}, False

  def start(self, name: str, argv: list[str], **popen) -> subprocess.Popen | None:
    with self._lock:
      if self.stopped:
        return None
      proc = self._procs[name] = subprocess.Popen(argv, **popen)
      return proc

  def done(self, name: str) -> None:
    with self._lock:
      self._procs.pop(name, None)

  def stop(self) -> None:
    with self._lock:
      self.stopped = True
      for proc in self._procs.values():
        proc.terminate()


STOPPED = -1  # a phase's exit status when the sweep stopped before or while it ran


def _phase(argv: list[str], log_path: str, run: Run, attempt: int, stopper: Stopper) -> tuple[int, list[str]]:
  """Runs one command with its output appended to the run's log; returns (exit status, last lines).
  STOPPED when the sweep was stopped, whatever the command's status (a trainer that saved its
  checkpoint on SIGTERM has not finished)."""
  with open(log_path, "a") as log:
    log.write(f"==> attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n")
    log.flush()
    offset = log.tell()
    try:
      proc = stopper.start(run.name, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
      rc = STOPPED if proc is None else proc.wait()
      stopper.done(run.name)
    except OSError as e:
      log.write(f"could not start {argv[0]!r}: {e}\n")
      rc = 127
  if stopper.stopped:
    rc = STOPPED
  return rc, (_tail(log_path, offset) if rc else [])


def run_one(sweep: Sweep, run: Run, workdir: str, *, train_cmd=TRAIN_CMD, eval_cmd=EVAL_CMD,
            stopper: Stopper | None = None) -> dict:
  """Trains one run in WORKDIR/<name>, then evaluates it if the sweep has `evals`; records its status.

  `vlmjax train` resumes from the run's checkpoint; a run whose training finished with the same
  settings only repeats the evaluation. `stopper`, when given, can stop the running process; the
  run is then recorded as `interrupted`.
  """
  stopper = stopper or Stopper()
  rundir = os.path.join(workdir, run.name)
  os.makedirs(rundir, exist_ok=True)
  previous = read_status(rundir)
  argv = train_argv(sweep.base, rundir, run, train_cmd)
  status = dict(name=run.name, group=run.group, index=run.index, seed=run.seed, params=run.params,
                base=sweep.base, overrides=[list(o) for o in run.overrides], evals=[list(e) for e in sweep.evals],
                sweep=sweep.path, command=shlex.join(argv), state="running", trained=False,
                started=time.strftime("%Y-%m-%d %H:%M:%S"), attempts=(previous or {}).get("attempts", 0) + 1)
  log_path = os.path.join(rundir, LOG)
  start = time.time()
  rc, tail = 0, []
  if _same_training(sweep, run, previous):
    status["trained"] = True
  else:
    _write_status(rundir, status)
    rc, tail = _phase(argv, log_path, run, status["attempts"], stopper)
    status["trained"] = rc == 0
  if rc == 0 and sweep.evals:
    status["eval_command"] = shlex.join(eval_argv(sweep, rundir, eval_cmd))
    _write_status(rundir, status)
    rc, tail = _phase(eval_argv(sweep, rundir, eval_cmd), log_path, run, status["attempts"], stopper)
  state = "done" if rc == 0 else "interrupted" if rc == STOPPED else "failed"
  status.update(seconds=round(time.time() - start, 1), returncode=rc, state=state)
  if state == "failed":
    status.update(error=tail[-1] if tail else f"exit status {rc} with no output", log_tail=tail)
  _write_status(rundir, status)
  return status


def run_sweep(sweep: Sweep, workdir: str, *, parallel: int = 1, train_cmd=TRAIN_CMD, eval_cmd=EVAL_CMD,
              print_fn=print) -> dict[str, str]:
  """Runs every unfinished run (N at a time); skips finished ones. Returns name -> final state.

  On KeyboardInterrupt, stops the running trainers (their last checkpoints stay), marks them
  `interrupted`, starts nothing more, and re-raises.
  """
  if parallel < 1:
    raise ConfigError(f"--parallel must be at least 1, got {parallel}")
  os.makedirs(workdir, exist_ok=True)
  states, todo = {}, []
  n = len(sweep.runs)
  tag = {run.name: f"[{i + 1}/{n}] {run.name}" for i, run in enumerate(sweep.runs)}
  for run in sweep.runs:
    state = state_of(sweep, run, workdir)
    if state == "done":
      states[run.name] = "done"
      print_fn(f"{tag[run.name]}: done, skipped")
    else:
      todo.append((run, state))
  lock, stopper = threading.Lock(), Stopper()

  def work(item):
    run, before = item
    if stopper.stopped:
      return run.name, before
    note = {"new": "", "changed": " (settings changed since it finished)"}.get(before, f" (was {before}; resuming)")
    trained = _same_training(sweep, run, read_status(os.path.join(workdir, run.name)))
    what = "evaluating" if trained else "training + evaluating" if sweep.evals else "training"
    with lock:
      print_fn(f"{tag[run.name]}: {what}{note} -> {os.path.join(workdir, run.name, LOG)}")
    status = run_one(sweep, run, workdir, train_cmd=train_cmd, eval_cmd=eval_cmd, stopper=stopper)
    with lock:
      if status["state"] == "interrupted":
        print_fn(f"{tag[run.name]}: interrupted")
      elif status["state"] == "done":
        print_fn(f"{tag[run.name]}: done in {status['seconds']:.0f}s")
      else:
        print_fn(f"{tag[run.name]}: FAILED (exit {status['returncode']}): "
                 f"{status['error']}")
    return run.name, status["state"]

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    for name, state in pool.map(work, todo):
      states[name] = state
  except KeyboardInterrupt:
    stopper.stop()
    pool.shutdown(wait=True, cancel_futures=True)
    print_fn(f"sweep {sweep.path}: interrupted; run the same command again to resume")
    raise
  pool.shutdown()
  failed = [n for n in states if states[n] != "done"]
  print_fn(f"sweep {sweep.path}: {len(states) - len(failed)}/{len(states)} runs done"
           + (f"; failed: {', '.join(failed)}" if failed else ""))
  return {r.name: states[r.name] for r in sweep.runs}


@contextlib.contextmanager
def sigterm_as_interrupt():
  """SIGTERM (Slurm's scancel or preemption, `kill`) handled as Ctrl-C while a sweep runs: the
  trainers are stopped (they checkpoint on SIGTERM), their runs marked `interrupted`, the sweep
  resumable. Only from the main thread, where Python delivers signals."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
  previous = signal.signal(signal.SIGTERM, interrupt)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def slurm_script(sweep: Sweep, workdir: str, *, parallel: int | None, extra: tuple[tuple[str, str], ...] = (),
                 sbatch: tuple[str, ...] = ()) -> str:
  """An array job: task i runs `vlmjax sweep FILE --only <run i>`, so skip/resume/status are shared."""
  names = " ".join(shlex.quote(r.name) for r in sweep.runs)
  cmd = [sys.executable, "-m", "vlmjax.cli", "sweep", os.path.abspath(sweep.path), "--workdir",
         os.path.abspath(workdir), *(f"--config.{k}={v}" for k, v in extra)]
  throttle = f"%{parallel}" if parallel else ""  # Slurm's array throttle: at most N tasks at once
  job = os.path.splitext(os.path.basename(sweep.path))[0]
  lines = [
      "#!/bin/bash",
      f"# Sweep {sweep.path}: {len(sweep.runs)} runs of {sweep.base}, one array task each.",
      f"# Written by `vlmjax sweep {sweep.path} --workdir {workdir} --launcher slurm`; submit with",
      f"#   sbatch {os.path.join(workdir, 'sweep.sbatch')}",
      "# Add #SBATCH lines for partition, GPUs and time with --sbatch=... (or edit this file).",
      f"#SBATCH --job-name={job}",
      f"#SBATCH --array=0-{len(sweep.runs) - 1}{throttle}",
      f"#SBATCH --output={os.path.abspath(workdir)}/slurm-%A_%a.out",
      *(f"#SBATCH {s}" for s in sbatch),
      "set -euo pipefail",
      f"RUNS=({names})",
      f"cd {shlex.quote(os.getcwd())}",
      f'exec {shlex.join(cmd)} --only "${{RUNS[$SLURM_ARRAY_TASK_ID]}}"',
  ]
  return "\n".join(lines) + "\n"


def _select(sweep: Sweep, only: list[str] | None) -> Sweep:
  if not only:
    return sweep
  names = [r.name for r in sweep.runs]
  for name in only:
    if name not in names:
      raise ConfigError(f"--only {name!r} is not a run of {sweep.path}; runs: {', '.join(names)}")
  return dataclasses.replace(sweep, runs=tuple(r for r in sweep.runs if r.name in only))


def _sweep(args, overrides) -> int:
  sweep = with_extra(load_sweep(args.file), tuple(overrides))
  extra = tuple(overrides)
  check_configs(sweep)
  sweep = _select(sweep, args.only)
  if args.dry_run:
    print(f"sweep {sweep.path}: {len(sweep.runs)} runs of {sweep.base} in {args.workdir}")
    width = max(len(r.name) for r in sweep.runs)
    for run in sweep.runs:
      state = state_of(sweep, run, args.workdir)
      flags = " ".join(f"--config.{k}={v}" for k, v in run.overrides)
      print(f"  {run.name:<{width}}  {state:<8} {flags}")
    example = train_argv(sweep.base, os.path.join(args.workdir, sweep.runs[0].name), sweep.runs[0])
    print(f"each run: {shlex.join(['vlmjax', *example[3:]])}")
    if sweep.evals:
      example = eval_argv(sweep, os.path.join(args.workdir, sweep.runs[0].name))
      print(f"then:     {shlex.join(['vlmjax', *example[3:]])}")
    return 0
  if args.parallel is not None and args.parallel < 1:
    raise ConfigError(f"--parallel must be at least 1, got {args.parallel}")
  if args.launcher == "slurm":
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "sweep.sbatch")
    with open(path, "w") as f:
      f.write(slurm_script(sweep, args.workdir, parallel=args.parallel, extra=extra, sbatch=tuple(args.sbatch)))
    print(f"wrote {path} ({len(sweep.runs)} array tasks); submit it with: sbatch {path}")
    return 0
  try:
    with sigterm_as_interrupt():
      states = run_sweep(sweep, args.workdir, parallel=1 if args.parallel is None else args.parallel)
  except KeyboardInterrupt as e:
    return 143 if str(e) == f"signal {signal.SIGTERM.value}" else 130
  return 0 if all(s == "done" for s in states.values()) else 1


def _report(args, overrides) -> int:
  from vlmjax import report
  print(report.write_report(args.workdir, args.metric or None, args.last), end="")
  return 0


def add_parsers(sub) -> None:
  p = sub.add_parser("sweep", help="run (or list, or write a Slurm array job for) an experiments/ sweep")
  p.add_argument("file", help="sweep file defining get_sweep(), e.g. experiments/caption_weight.py")
  p.add_argument("--workdir", required=True, help="each run trains in WORKDIR/<run name>")
  p.add_argument("--dry-run", action="store_true", help="list the runs, their overrides and states; run nothing")
  p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                 help="local: train here; slurm: write WORKDIR/sweep.sbatch (an array job) instead")
  p.add_argument("--parallel", type=int, default=None, metavar="N",
                 help="runs at a time: local default 1; slurm default unlimited (the array's %%N throttle)")
  p.add_argument("--only", action="append", metavar="RUN", help="run only this run (repeatable)")
  p.add_argument("--sbatch", action="append", default=[], metavar="OPT",
                 help="extra #SBATCH option for --launcher slurm, e.g. --sbatch=--gres=gpu:8 (repeatable)")
  p.set_defaults(run=_sweep, takes_overrides=True)

  p = sub.add_parser("report", help="tables and plots of a sweep's runs: WORKDIR/report.md")
  p.add_argument("workdir", help="a sweep's workdir (one subdirectory per run)")
  p.add_argument("--metric", action="append", metavar="NAME[:min|max]",
                 help="metric to tabulate and plot (repeatable); default: train losses and every eval metric")
  p.add_argument("--last", type=int, default=1, metavar="K",
                 help="final value = mean of the last K logged values (smooths noisy train losses)")
  p.set_defaults(run=_report)
