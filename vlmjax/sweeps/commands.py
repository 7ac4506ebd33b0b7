"""`vlmjax sweep` and `vlmjax report`: the command-line side of sweeps."""

from __future__ import annotations

import os
import shlex
import signal
import sys

from vlmjax.errors import ConfigError, UserError
from vlmjax.sweeps import spec


def check_configs(sweep: spec.Sweep) -> list[str]:
  """Loads every run's config, applies the sweep's `evals` as `vlmjax eval` will after training
  (`evals.commands.load_config`), and validates the evaluators, so a bad key or value, in
  training or in evaluation, fails before anything trains. Returns the evaluators the configs run
  during training themselves (which `vlmjax eval` after training would run again)."""
  from vlmjax import config, evals
  from vlmjax.evals import registry
  own = []
  for run in sweep.runs:
    try:
      cfg = config.load(sweep.base, run.overrides)
      own += [name for name in cfg.evals.keys() if name not in own]
      if sweep.evals:
        registry.apply_overrides(cfg, sweep.evals, where="sweep evals")
      evals.prepare_all(cfg)
    except UserError as e:
      raise type(e)(f"run {run.name}: {e}") from None
  return own


def _sweep(args, overrides) -> int:
  from vlmjax.sweeps import runner, slurm  # noqa: PLC0415
  sweep = spec.with_extra(spec.load_sweep(args.file), tuple(overrides))
  extra = tuple(overrides)
  own = check_configs(sweep)
  if own and sweep.evals:
    sys.stderr.write(f"vlmjax sweep: note: the base config evaluates during training ({', '.join(own)}), and "
                     "`vlmjax eval` after training runs those again besides the sweep's `evals`; to evaluate once, "
                     "turn the config's off in `base` (configs/coca_tiny.py:evals=0) or drop the sweep's `evals`\n")
  sweep = spec.select(sweep, args.only)
  if args.dry_run:
    print(f"sweep {sweep.path}: {len(sweep.runs)} runs of {sweep.base} in {args.workdir}")
    width = max(len(r.name) for r in sweep.runs)
    for run in sweep.runs:
      state = runner.state_of(sweep, run, args.workdir)
      flags = " ".join(f"--config.{k}={v}" for k, v in run.overrides)
      print(f"  {run.name:<{width}}  {state:<8} {flags}")
    example = runner.train_argv(sweep.base, os.path.join(args.workdir, sweep.runs[0].name), sweep.runs[0])
    print(f"each run: {shlex.join(['vlmjax', *example[3:]])}")
    if sweep.evals:
      example = runner.eval_argv(sweep, os.path.join(args.workdir, sweep.runs[0].name))
      print(f"then:     {shlex.join(['vlmjax', *example[3:]])}")
    return 0
  if args.parallel is not None and args.parallel < 1:
    raise ConfigError(f"--parallel must be at least 1, got {args.parallel}")
  if args.launcher == "slurm":
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, "sweep.sbatch")
    with open(path, "w") as f:
      f.write(slurm.slurm_script(sweep, args.workdir, parallel=args.parallel, extra=extra, sbatch=tuple(args.sbatch)))
    print(f"wrote {path} ({len(sweep.runs)} array tasks); submit it with: sbatch {path}")
    return 0
  try:
    with runner.sigterm_as_interrupt():
      states = runner.run_sweep(sweep, args.workdir, parallel=1 if args.parallel is None else args.parallel)
  except KeyboardInterrupt as e:
    return 143 if str(e) == f"signal {signal.SIGTERM.value}" else 130
  return 0 if all(s == "done" for s in states.values()) else 1


def _report(args, overrides) -> int:
  from vlmjax.sweeps import report  # noqa: PLC0415 (matplotlib)
  print(report.write_report(args.workdir, args.metric or None, args.last), end="")
  return 0


SWEEP_EPILOG = """\
examples:
  vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight --dry-run
  vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight --parallel 2
  vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight --only 'lambda_cap=1.0,seed=1'
  vlmjax sweep experiments/pooler.py --workdir runs/pooler --config.optim.lr=3e-4
  vlmjax sweep experiments/pooler.py --workdir runs/pooler --launcher slurm --sbatch=--gres=gpu:8
  vlmjax report runs/caption_weight

experiments/README.md describes sweep files and the shipped studies."""

REPORT_EPILOG = """\
examples:
  vlmjax report runs/caption_weight
  vlmjax report runs/caption_weight --last 3 --metric train/contrastive_loss --metric eval/zs/top1
  vlmjax report runs/lr_tries --metric eval/retrieval/i2t_r1:max   # runs/lr_tries/<run>/ from vlmjax train"""


def add_parsers(sub) -> None:
  p = sub.add_parser("sweep", help="run (or list, or write a Slurm array job for) an experiments/ sweep",
                     description="Trains every run of a sweep file in DIR/<run name> (then evaluates it, if "
                     "the sweep has\n`evals`); finished runs are skipped, the others resume from their last "
                     "checkpoint. Every\nrun's config is checked before anything trains.", epilog=SWEEP_EPILOG)
  p.add_argument("file", metavar="FILE", help="sweep file defining get_sweep(), e.g. experiments/caption_weight.py")
  p.add_argument("--workdir", required=True, metavar="DIR", help="each run trains in DIR/<run name>")
  p.add_argument("--dry-run", action="store_true", help="list the runs, their overrides and states; run nothing")
  p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                 help="local: train here; slurm: write DIR/sweep.sbatch (an array job) instead")
  p.add_argument("--parallel", type=int, default=None, metavar="N",
                 help="runs at a time: local default 1; slurm default unlimited (the array's %%N throttle)")
  p.add_argument("--only", action="append", metavar="RUN", help="run only this run (repeatable)")
  p.add_argument("--sbatch", action="append", default=[], metavar="OPT",
                 help="extra #SBATCH option for --launcher slurm, e.g. --sbatch=--gres=gpu:8 (repeatable)")
  p.takes_overrides("Added to every run's overrides, e.g. --config.optim.lr=3e-4; a key the sweep varies is "
                    "an error.")
  p.set_defaults(run=_sweep)

  p = sub.add_parser("report", help="tables and plots of a folder of runs (a sweep's or any): DIR/report.md",
                     description="Tables (per group of runs that differ only in seed: final and best values, "
                     "mean ± std over\nseeds; per run: status, steps, time) and one plot per metric: written "
                     "to DIR/report.md (the\nplots as PNG files beside it) and printed. DIR is a sweep's "
                     "workdir or any "
                     "directory with one\nsubdirectory per run (training workdirs): runs outside a sweep are "
                     "named by the config\nkeys that differ between them.", epilog=REPORT_EPILOG)
  p.add_argument("workdir", metavar="DIR",
                 help="a folder of runs: a sweep's workdir, or any directory with one training workdir per "
                 "subdirectory")
  p.add_argument("--metric", action="append", metavar="NAME[:min|max]",
                 help="metric to tabulate and plot (repeatable; :min / :max says which is best); default: the "
                 "train losses and every eval metric")
  p.add_argument("--last", type=int, default=1, metavar="K",
                 help="final value = mean of the last K logged values (smooths noisy train losses)")
  p.set_defaults(run=_report)
