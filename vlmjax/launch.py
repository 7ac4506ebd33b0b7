"""`vlmjax launch local -n N -- train ...`: N processes on this machine, as N hosts would be.

Each process gets `--coordinator 127.0.0.1:PORT --num_processes N --process_id i` and
its own fake CPU devices (`--devices-per-process`), so a multi-host run (collectives
over 127.0.0.1, per-host data shares, every process checkpointing its shards) can be
tested on one box. Process 0's output goes to the console; the others' to
`launch-logs/<i>.log` in the workdir-independent log directory given by `--logs`.
If any process fails, the others are stopped and the exit status is the first failure's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from vlmjax.config import ConfigError


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


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
  for i in range(args.n):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={args.devices_per_process}".strip())
    out = None
    if i:
      logs.append(open(os.path.join(args.logs, f"{i}.log"), "w"))
      out = logs[-1]
    argv = [sys.executable, "-m", "vlmjax.cli", *command, "--coordinator", coordinator,
            "--num_processes", str(args.n), "--process_id", str(i)]
    procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
  status = 0
  try:
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed:
        status = failed[0]
        break
      time.sleep(0.2)
  except KeyboardInterrupt:
    status = 130
  finally:
    for p in procs:
      if p.poll() is None and status:
        p.send_signal(signal.SIGTERM)
    for p in procs:
      try:
        p.wait(timeout=60)
      except subprocess.TimeoutExpired:
        p.kill()
    for f in logs:
      f.close()
  failed = [p.returncode for p in procs if p.returncode]
  return status or (failed[0] if failed else 0)


def add_parsers(sub) -> None:
  p = sub.add_parser("launch", help="start a multi-process run")
  launch_sub = p.add_subparsers(dest="launcher", required=True, parser_class=type(p))
  d = launch_sub.add_parser("local", help="N processes on this machine (CPU devices, collectives over 127.0.0.1)")
  d.add_argument("-n", type=int, required=True, help="number of processes")
  d.add_argument("--devices-per-process", type=int, default=2)
  d.add_argument("--logs", default="launch-logs", help="directory for the logs of processes 1..N-1")
  d.add_argument("command", nargs="...", help="-- train --config ... --workdir ...")
  d.set_defaults(run=_local)
