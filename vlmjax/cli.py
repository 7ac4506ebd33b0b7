"""The `vlmjax` command: train | info | data | eval | caption | sweep | report | convert | launch.

Each command group lives with the code it drives: a module listed in
`_COMMAND_MODULES` defines `add_parsers(sub)`, which adds its subparsers and
sets `run=fn` on each, where `fn(args, overrides) -> int`. Those modules keep
their top-level imports light (no jax) so `vlmjax --help` stays fast.

User errors (bad config, bad override, bad data spec) print one line and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import sys

from vlmjax import console, distributed
from vlmjax.errors import ConfigError, UserError

_COMMAND_MODULES = (
    "vlmjax.data.commands", "vlmjax.evals.commands", "vlmjax.sweeps.commands", "vlmjax.convert.commands", "vlmjax.launch")


def split_overrides(extra: list[str]) -> list[tuple[str, str]]:
  """`--config.a.b=v` or `--config.a.b v` -> [("a.b", "v")]; anything else is a ConfigError."""
  out, i = [], 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      raise ConfigError(f"unrecognized argument {arg!r}; overrides look like --config.a.b=value")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(extra):
        raise ConfigError(f"override {arg!r} has no value; write {arg}=VALUE")
      value, i = extra[i + 1], i + 1
    out.append((key, value))
    i += 1
  return out


class Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, status 2
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)


PREEMPTED = 143  # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended
INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)


def load_train_config(spec: str, overrides):
  """`FILE.py[:ARG]`, or a run's resolved `config.json` (relaunching it as it was, brought up to date
  as `vlmjax eval` reads it), with the overrides applied and validated."""
  from vlmjax import config  # noqa: PLC0415
  if spec.endswith(".json"):
    from vlmjax.evals import commands as eval_commands  # noqa: PLC0415
    return eval_commands.load_config_file(spec, overrides)
  return config.load(spec, overrides)


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # the disk, not the code


def _train(args, overrides) -> int:
  from vlmjax import checkpoint, train  # jax imports are slow; keep `--help` fast
  cfg = load_train_config(args.config, overrides)
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  try:
    summary = train.train(cfg, args.workdir)
  except train.TrainingHalted as e:
    sys.stderr.write(f"vlmjax: training halted: {e}\n")
    return 3
  except OSError as e:
    if e.errno not in STORAGE_ERRNOS:
      raise
    sys.stderr.write(f"vlmjax: error: cannot write {e.filename or 'to the workdir'}: {e.strerror}; free space "
                     "(or fix permissions) and run the same command to resume from the last checkpoint\n")
    return 1
  except checkpoint.SaveFailed as e:  # orbax's failed writer threads would hold the exit for minutes
    sys.stderr.write(f"vlmjax: error: {e}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
  # Stopped by SIGTERM / a preemption notice, checkpoint saved: not finished, so not 0 (a job
  # runner that retries failed jobs restarts it, and a sweep does not take it for done).
  code = INTERRUPTED if summary["interrupted"] else PREEMPTED if summary["preempted"] else 0
  if summary.get("abandoned"):  # XLA still compiling in a thread: interpreter shutdown would abort on it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


def _info(args, overrides) -> int:
  from vlmjax import config, info
  cfg = config.load(args.config, overrides)
  counts, flops = info.param_counts(cfg), info.train_flops_per_example(cfg)
  if args.json:
    print(json.dumps({"params": counts, "train_flops_per_example": flops}))
  else:
    for name, n in counts.items():
      print(f"{name:<20} {n:>15,}  ({n / 1e6:.2f}M)")
    print(f"{'train GFLOP/example':<20} {flops / 1e9:>15,.2f}  (forward + backward)")
  return 0


def build_parser() -> Parser:
  parser = Parser(prog="vlmjax", description="Vision-language pretraining in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

  p = sub.add_parser("train", help="train (or resume) a config in a workdir")
  p.add_argument("--config", required=True, help="config file, optionally FILE:k=v,...")
  p.add_argument("--workdir", required=True)
  distributed.add_flags(p)
  p.set_defaults(run=_train, takes_overrides=True)

  p = sub.add_parser("info", help="parameter counts and training FLOPs of a config, without allocating it")
  p.add_argument("--config", required=True, help="config file, optionally FILE:k=v,...")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  p.set_defaults(run=_info, takes_overrides=True)

  for name in _COMMAND_MODULES:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
        raise
      continue  # a command group not written yet
    module.add_parsers(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  # `train` copies its console to WORKDIR/log.txt (attached once the workdir is made), errors included
  with console.Tee() if args.run is _train else contextlib.nullcontext():
    try:
      if extra and not getattr(args, "takes_overrides", False):
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")
      return args.run(args, split_overrides(extra))
    except UserError as e:
      sys.stderr.write(f"vlmjax: error: {e}\n")
      return 2
    except KeyboardInterrupt:
      sys.stderr.write("vlmjax: interrupted\n")
      return 130


if __name__ == "__main__":
  sys.exit(main())
