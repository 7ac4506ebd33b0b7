"""`vlmjax launch local -n N -- train ...`: N processes on this machine, as N hosts would be.

Each process gets `--coordinator 127.0.0.1:PORT --num-processes N --process-id i` and
its own fake CPU devices (`--devices-per-process`), so a multi-host run (collectives
over 127.0.0.1, per-host data shares, every process checkpointing its shards) can be
tested on one box. Process 0's output goes to the console; the others' to
`<logs>/<i>.log` (`--logs`, default `launch-logs/`).

Exit status, as a shell would report it (a process killed by signal n counts as 128 + n):
- all processes finished: 0;
- one failed: the status is that of the first process seen to fail (the cause; the others'
  failures follow from it), named on stderr with its log. The others get SIGTERM, and SIGKILL
  after `_FAILURE_GRACE_S` seconds: without their peer they cannot agree on a step to save at;
- the launcher got SIGTERM or SIGHUP (Ctrl-C): it forwards SIGTERM to every process (they
  save at one step and exit 143, as on preemption), waits for them (SIGKILL after `_GRACE_S`
  seconds, or at a second signal) and exits 143 (130).
The processes run in their own process group, so Ctrl-C reaches only the launcher, which
stops them as above; on Linux they also get SIGTERM if the launcher itself is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from vlmjax.errors import ConfigError

_GRACE_S = 60  # after a forwarded SIGTERM, how long the processes get to save and exit before SIGKILL
_FAILURE_GRACE_S = 10  # the same after one process failed (a collective with it would never end)
_POLL_S = 0.2
_STOP_SIGNALS = {signal.SIGTERM: 143, signal.SIGHUP: 143, signal.SIGINT: 130}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _child_argv(command: list[str], coordinator: str, n: int, i: int) -> list[str]:
  return [sys.executable, "-m", "vlmjax.cli", *command, "--coordinator", coordinator,
          "--num-processes", str(n), "--process-id", str(i)]


def exit_status(returncode: int) -> int:
  """Popen's returncode (-n when signal n killed it) as a shell reports it (128 + n)."""
  return 128 - returncode if returncode < 0 else returncode


def _describe(status: int) -> str:
  if status > 128:
    try:
      return f"status {status} ({signal.Signals(status - 128).name})"
    except ValueError:
      pass
  return f"status {status}"


def _die_with_launcher(launcher_pid: int):
  """preexec_fn: on Linux, SIGTERM this child when the launcher dies (even by SIGKILL)."""
  def set_pdeathsig():
    try:
      ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      return
    if os.getppid() != launcher_pid:  # the launcher died before prctl took effect
      os.kill(os.getpid(), signal.SIGTERM)
  return set_pdeathsig if sys.platform.startswith("linux") else None


class _Stopper:
  """Turns SIGTERM / SIGHUP / SIGINT into a request to stop (a flag the poll loop reads).

  A signal the launcher was started with ignored (nohup: SIGHUP; `cmd &` in a script: SIGINT)
  stays ignored. Handlers can only be set from the main thread; elsewhere nothing is caught.
  """

  def __init__(self):
    self.status = 0  # 143 / 130 once a stop was asked for
    self.count = 0
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in _STOP_SIGNALS:
      if signal.getsignal(sig) is not signal.SIG_IGN:
        self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del frame
    self.status = self.status or _STOP_SIGNALS[signal.Signals(signum)]
    self.count += 1

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen], stopper: _Stopper, grace_s: float) -> None:
  """SIGTERM to the processes still running, then wait; SIGKILL after the grace period or
  when another stop signal arrives."""
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline, count = time.monotonic() + grace_s, stopper.count
  while any(p.poll() is None for p in procs):
    if time.monotonic() > deadline or stopper.count > count:
      for p in procs:
        if p.poll() is None:
          p.kill()
      for p in procs:
        p.wait()
      return
    time.sleep(_POLL_S / 2)


def _local(args, overrides) -> int:
  del overrides
  command = list(args.command)
  if command and command[0] == "--":
    command = command[1:]
  if not command:
    raise ConfigError("launch local needs a command after `--`, e.g. -- train --config configs/coca_tiny.py --workdir DIR")
  if args.n < 1 or args.devices_per_process < 1:
    raise ConfigError(f"-n and --devices-per-process must be positive, got {args.n} and {args.devices_per_process}")
  os.makedirs(args.logs, exist_ok=True)
  coordinator = f"127.0.0.1:{_free_port()}"
  procs, logs = [], []
  stopper = _Stopper()
  try:
    for i in range(args.n):
      if stopper.status:
        break
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                           f"--xla_force_host_platform_device_count={args.devices_per_process}".strip())
      out = None
      if i:
        logs.append(open(os.path.join(args.logs, f"{i}.log"), "w"))
        out = logs[-1]
      procs.append(subprocess.Popen(
          _child_argv(command, coordinator, args.n, i), env=env, stdin=subprocess.DEVNULL, stdout=out,
          stderr=subprocess.STDOUT if out else None, start_new_session=True,
          preexec_fn=_die_with_launcher(os.getpid())))
    while True:
      # Every process, every pass: a failed process 1 must not wait for process 0 to end.
      failure = next(((i, exit_status(p.returncode)) for i, p in enumerate(procs)
                      if p.poll() not in (None, 0)), None)  # (index, status) of the first seen to fail
      if failure or stopper.status or all(p.returncode is not None for p in procs):
        break
      time.sleep(_POLL_S)
    if failure is not None:
      i, status = failure
      where = "its output is above" if i == 0 else f"its log: {os.path.join(args.logs, f'{i}.log')}"
      sys.stderr.write(f"vlmjax launch: process {i} exited with {_describe(status)}; {where}\n")
      grace_s = _FAILURE_GRACE_S
    elif stopper.status:
      name = {143: "SIGTERM or SIGHUP", 130: "Ctrl-C"}[stopper.status]
      sys.stderr.write(f"vlmjax launch: {name}: stopping {sum(p.poll() is None for p in procs)} processes "
                       f"(SIGTERM; SIGKILL after {_GRACE_S} s or at another signal)\n")
      grace_s = _GRACE_S
    else:
      grace_s = 0  # all finished
    _stop(procs, stopper, grace_s)
  finally:
    for p in procs:  # an unexpected error in the launcher itself: leave nothing running
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
    stopper.restore()
  return failure[1] if failure else stopper.status  # a stop asked for after a failure keeps its status


LOCAL_EPILOG = """\
examples:
  vlmjax launch local -n 2 -- train --config configs/coca_tiny.py --workdir runs/two_hosts
  vlmjax launch local -n 2 -- eval --workdir runs/two_hosts    # its evaluators, as two hosts
  vlmjax launch local -n 2 --logs /tmp/logs -- train --config configs/coca_tiny.py --workdir runs/x \\
      --config.batch_size=32"""


def add_parsers(sub) -> None:
  p = sub.add_parser("launch", help="start a multi-process run",
                     description="Starts the processes of a multi-process run. On clusters, the scheduler does "
                     "(srun, mpirun,\nscripts/launch_tpu_vm.sh); `launch local` tests the same run on one machine.",
                     epilog="examples:\n  vlmjax launch local -n 2 -- train --config configs/coca_tiny.py "
                     "--workdir runs/two_hosts")
  launch_sub = p.add_subparsers(dest="launcher", required=True, parser_class=type(p), metavar="LAUNCHER")
  d = launch_sub.add_parser("local", help="N processes on this machine (CPU devices, collectives over 127.0.0.1)",
                            description="Runs a vlmjax command in N processes on this machine, as N hosts would "
                            "(each with its own\nfake CPU devices, collectives over 127.0.0.1), passing each "
                            "--coordinator, --num-processes and\n--process-id. Process 0 prints here; the others "
                            "write LOGS/<i>.log. The first process to fail\nstops the others; its status is the "
                            "launcher's.", epilog=LOCAL_EPILOG)
  d.add_argument("-n", type=int, required=True, metavar="N", help="number of processes")
  d.add_argument("--devices-per-process", type=int, default=2, metavar="K", help="fake CPU devices per process")
  d.add_argument("--logs", default="launch-logs", metavar="LOGS", help="directory for the logs of processes 1..N-1")
  d.add_argument("command", nargs="...", metavar="-- COMMAND",
                 help="the vlmjax command each process runs, after `--`: e.g. -- train --config FILE --workdir DIR")
  d.set_defaults(run=_local)
