"""Running a sweep's runs: each one `vlmjax train` (then `vlmjax eval`) in a subprocess, its output
appended to `WORKDIR/<run>/output.txt` and its state recorded in `status.json` (`status.py`);
finished runs are skipped, the rest resume; Ctrl-C / SIGTERM stop the trainers at their last
checkpoint and mark their runs `interrupted`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from vlmjax.errors import ConfigError
from vlmjax.sweeps import status as run_status
from vlmjax.sweeps.spec import Run, Sweep

LOG = "output.txt"  # the subprocesses' stdout and stderr (`vlmjax train` keeps its own log.txt)
TRAIN_CMD = (sys.executable, "-m", "vlmjax.cli", "train")
EVAL_CMD = (sys.executable, "-m", "vlmjax.cli", "eval")


def state_of(sweep: Sweep, run: Run, workdir: str) -> str:
  """new | done | failed | interrupted | running (or killed) | changed (done with other settings)."""
  status = run_status.read(os.path.join(workdir, run.name))
  if status is None:
    return "new"
  if status["state"] == "done" and not (same_training(sweep, run, status) and
                                        status["evals"] == [list(e) for e in sweep.evals]):
    return "changed"
  return status["state"]


def same_training(sweep: Sweep, run: Run, status: dict | None) -> bool:
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
POLL_S = 0.2  # how often the main thread wakes while runs go on (to run a signal's handler)


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
  previous = run_status.read(rundir)
  argv = train_argv(sweep.base, rundir, run, train_cmd)
  status = dict(name=run.name, group=run.group, index=run.index, seed=run.seed, params=run.params,
                base=sweep.base, overrides=[list(o) for o in run.overrides], evals=[list(e) for e in sweep.evals],
                sweep=sweep.path, command=shlex.join(argv), state="running", trained=False,
                started=time.strftime("%Y-%m-%d %H:%M:%S"), attempts=(previous or {}).get("attempts", 0) + 1)
  log_path = os.path.join(rundir, LOG)
  start = time.time()
  rc, tail = 0, []
  if same_training(sweep, run, previous):
    status["trained"] = True
  else:
    run_status.write(rundir, status)
    rc, tail = _phase(argv, log_path, run, status["attempts"], stopper)
    status["trained"] = rc == 0
  if rc == 0 and sweep.evals:
    status["eval_command"] = shlex.join(eval_argv(sweep, rundir, eval_cmd))
    run_status.write(rundir, status)
    rc, tail = _phase(eval_argv(sweep, rundir, eval_cmd), log_path, run, status["attempts"], stopper)
  state = "done" if rc == 0 else "interrupted" if rc == STOPPED else "failed"
  status.update(seconds=round(time.time() - start, 1), returncode=rc, state=state)
  if state == "failed":
    status.update(error=tail[-1] if tail else f"exit status {rc} with no output", log_tail=tail)
  run_status.write(rundir, status)
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
    trained = same_training(sweep, run, run_status.read(os.path.join(workdir, run.name)))
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
    pending = [pool.submit(work, item) for item in todo]
    _wait(pending)
    for future in pending:
      name, state = future.result()
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


def _wait(futures: list) -> None:
  """Until every future is done or one failed, waking every POLL_S: Python runs signal handlers in the
  main thread only, between bytecodes, and a SIGTERM sent to the process (scancel) may land in a worker
  thread; a main thread blocked until a run ends would stop the sweep only then."""
  while True:
    done, running = concurrent.futures.wait(futures, timeout=POLL_S, return_when=concurrent.futures.FIRST_EXCEPTION)
    if not running or any(f.exception() for f in done):
      return


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
  # A native library that blocked SIGTERM in this thread (threads created later inherit the mask) would
  # leave the signal pending forever: unblocked for the sweep, the mask put back after it.
  mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    signal.signal(signal.SIGTERM, previous)
