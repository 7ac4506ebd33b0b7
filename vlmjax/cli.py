"""The `vlmjax` command: train | info | data | eval | caption | sweep | report | convert | launch.

Each command group lives with the code it drives: a module listed in
`_COMMAND_MODULES` defines `add_parsers(sub)`, which adds its subparsers and
sets `run=fn` on each, where `fn(args, overrides) -> int`; a command that takes
`--config.KEY=VALUE` overrides says so with `p.takes_overrides(help_text)`. Those modules keep
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """Keeps the line breaks of descriptions and epilogs (examples) and appends `(default: X)` to an
  option's help, except where that says nothing (a default of None, False or empty) or the help
  already speaks of its default. `usage_tail` ends the usage line (`[--config.KEY=VALUE ...]`)."""

  usage_tail = ""

  def _get_help_string(self, action):
    text = action.help or ""
    default = action.default
    if (default is None or default is False or (isinstance(default, (list, tuple, str)) and not default)
        or "default" in text):
      return text
    return super()._get_help_string(action)

  def _format_usage(self, usage, actions, groups, prefix):
    text = super()._format_usage(usage, actions, groups, prefix)
    if not self.usage_tail:
      return text
    lines = text.rstrip().split("\n")
    if len(lines[-1]) + 1 + len(self.usage_tail) <= self._width:
      lines[-1] += " " + self.usage_tail
    else:  # a line of its own, indented as argparse indents the usage's continuation lines
      indent = len(lines[1]) - len(lines[1].lstrip()) if len(lines) > 1 else len(f"usage: {self._prog} ")
      lines.append(" " * indent + self.usage_tail)
    return "\n".join(lines) + "\n\n"


class Parser(argparse.ArgumentParser):
  """`vlmjax`'s parsers: errors in one line (status 2); help that shows defaults and keeps the line
  breaks of epilogs (subparsers made with `parser_class=Parser` or `type(p)` get both)."""

  usage_tail = ""  # set by `takes_overrides`

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message: str):  # one line, status 2
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)

  def _get_formatter(self):
    formatter = super()._get_formatter()
    formatter.usage_tail = self.usage_tail
    return formatter

  def takes_overrides(self, text: str) -> None:
    """This command takes `--config.KEY=VALUE` overrides (`main` hands them to its `run`); `text`, the
    help of the "config overrides" section, says what they change."""
    self.set_defaults(takes_overrides=True)
    self.usage_tail = "[--config.KEY=VALUE ...]"
    self.add_argument_group("config overrides (--config.KEY=VALUE or --config.KEY VALUE, repeatable)", text)


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
  from vlmjax import info
  cfg = load_train_config(args.config, overrides)
  counts, flops = info.param_counts(cfg), info.train_flops(cfg)
  if args.json:
    print(json.dumps({"params": counts, **flops}))
    return 0
  for name, n in counts.items():
    print(f"{name:<20} {n:>15,}  ({n / 1e6:.2f}M)")
  gflop = flops["train_flops_per_example"] / 1e9
  if "patch_dropout" not in flops:
    at = f", {flops['naflex_budget']} patches per image, unpacked" if "naflex_budget" in flops else ""
    print(f"{'train GFLOP/example':<20} {gflop:>15,.2f}  (forward + backward{at})")
    for n, f in flops.get("train_flops_per_budget", {}).items():
      print(f"{'  at ' + n + ' patches':<20} {f / 1e9:>15,.2f}  (a budget of data.train.budgets)")
    return 0
  (k, n), full = flops["kept_patches"], flops["train_flops_per_example_no_patch_dropout"] / 1e9
  print(f"{'train GFLOP/example':<20} {gflop:>15,.2f}  (forward + backward, patch dropout "
        f"{flops['patch_dropout']:g}: {k} of {n} patches kept; {gflop / full:.1%} of the full count)")
  print(f"{'  without dropout':<20} {full:>15,.2f}  (every patch, as evaluation sees them)")
  return 0


MAIN_EPILOG = """\
examples:
  vlmjax data synth --out data/shapes          # the synthetic shapes set: 4 tar shards of 1000
  vlmjax train --config configs/coca_tiny.py --workdir runs/demo \\
      --config.data.train.source='tar:data/shapes/{00000..00003}.tar' --config.optim.lr=1e-3
  vlmjax info --config configs/coca_base.py    # parameters and FLOPs, nothing allocated
  vlmjax eval --workdir runs/demo              # the run's evaluators on its last checkpoint
  vlmjax caption --workdir runs/demo image.png
  vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight --dry-run
  vlmjax report runs/caption_weight            # tables and plots of a folder of runs

`vlmjax COMMAND --help` shows a command's options and examples. Bad input (an unknown config
key, a wrong value, a missing file) is one line on stderr and exit status 2."""

OVERRIDES_HELP = """\
Sets any config key, after FILE:k=v,... was handed to the file's get_config: e.g.
--config.batch_size=64, --config.optim.lr=1e-3, --config.model.vision.depth=6,
--config.data.train.source='tar:data/shapes/{00000..00003}.tar'. The value is parsed to the
key's type; an unknown key or a wrong type is a one-line error naming the closest keys.
README.md lists the keys (its config reference)."""

TRAIN_DESCRIPTION = """\
Trains the config in WORKDIR; run again on the same WORKDIR, it resumes from the last checkpoint
(parameters, optimiser state and data position). WORKDIR gets config.json (the resolved config),
run.json (provenance), log.txt (the console), metrics.jsonl, tb/ and checkpoints/.
Exit status: 0 finished, 1 a save failed or the disk is full, 2 bad input, 3 halted on
non-finite steps, 130 Ctrl-C and 143 SIGTERM (both saved: the same command resumes)."""

TRAIN_EPILOG = """\
examples:
  vlmjax train --config configs/coca_tiny.py --workdir runs/demo --config.optim.lr=1e-3
  vlmjax train --config configs/coca_tiny.py:steps=1000,batch=128 --workdir runs/exp1 \\
      --config.loss.caption_weight=1.0
  vlmjax train --config runs/exp1/config.json --workdir runs/exp1b   # relaunch a run as it was
  vlmjax launch local -n 2 -- train --config configs/coca_tiny.py --workdir runs/two_hosts"""

INFO_EPILOG = """\
examples:
  vlmjax info --config configs/coca_tiny.py
  vlmjax info --config configs/coca_base.py --config.model.vision.depth=24 --json"""

CONFIG_HELP = ("a config file FILE.py[:k=v,...] (k=v,... is handed to its get_config, e.g. "
               "configs/coca_tiny.py:steps=300,batch=32)")


def build_parser() -> Parser:
  parser = Parser(prog="vlmjax", description="Vision-language pretraining in JAX.", epilog=MAIN_EPILOG)
  sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

  p = sub.add_parser("train", help="train (or resume) a config in a workdir", description=TRAIN_DESCRIPTION,
                     epilog=TRAIN_EPILOG)
  p.add_argument("--config", required=True, metavar="FILE[:k=v,...]",
                 help=f"{CONFIG_HELP}, or a run's WORKDIR/config.json to relaunch that run as it was "
                 "(overrides apply on top)")
  p.add_argument("--workdir", required=True, metavar="DIR",
                 help="the run's directory: created, or resumed from its last checkpoint")
  distributed.add_flags(p)
  p.takes_overrides(OVERRIDES_HELP)
  p.set_defaults(run=_train)

  p = sub.add_parser("info", help="parameter counts and training FLOPs of a config, without allocating it",
                     description="Parameter counts per component and training FLOPs per example of a "
                     "config,\ncomputed on shapes: nothing is allocated.", epilog=INFO_EPILOG)
  p.add_argument("--config", required=True, metavar="FILE[:k=v,...]", help=f"{CONFIG_HELP}, or a run's config.json")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
  p.takes_overrides(OVERRIDES_HELP)
  p.set_defaults(run=_info)

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
