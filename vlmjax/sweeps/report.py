"""Reports on a directory of runs: every run's final and best metrics, mean ± std over seeds, status, and plots.

`write_report(workdir)` reads each `WORKDIR/<run>/` (`metrics.jsonl`, `status.json` from the sweep
runner, `config.json` from training, `eval/<step>.json` from `vlmjax eval`) and writes `WORKDIR/report.md`
plus one PNG per metric. WORKDIR is a sweep's workdir or any folder of training workdirs: a run without
a status.json is named by the config.json keys that differ between such runs (`status.name_runs`). Runs that
differ only in seed form a group. Group statistics count finished runs only (`done`: in the sweep, or
without a status.json, logged up to total_steps); the others are listed under the table. A run's final
value is its last logged one even when that is NaN or inf (a diverged run); only "best" skips non-finite values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics

from vlmjax.errors import ConfigError
from vlmjax.sweeps import status as run_status

DEFAULT_TRAIN_METRICS = ("train/loss", "train/contrastive_loss", "train/caption_loss")
LOWER_IS_BETTER = ("loss", "perplexity", "error")
CONFIG_FIX = "`vlmjax train` writes it when the run starts: run that run again, or delete it"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclasses.dataclass
class RunResult:
  name: str
  group: str
  index: float          # sweep order (runs without a sweep status sort after, by name)
  seed: int | None
  state: str            # a sweep's state (done | failed | running | ...); without one: done | stopped | unknown
  error: str | None
  seconds: float | None
  total_steps: int | None
  rows: list[dict]      # metrics.jsonl rows merged by step, sorted by step
  unreadable: int = 0   # metrics.jsonl lines / eval files that were not JSON objects with a step (skipped)
  dir: str = ""         # its directory under WORKDIR (the name, unless named by its config)

  @property
  def last_step(self) -> int | None:
    return self.rows[-1]["step"] if self.rows else None

  @property
  def finished(self) -> bool:
    """Counted in group statistics: done in its sweep, or without one, logged up to total_steps."""
    return self.state == "done"

  def series(self, metric: str) -> tuple[list[int], list[float]]:
    """Steps and values of `metric`, non-finite ones (a NaN loss) included."""
    pts = [(r["step"], float(r[metric])) for r in self.rows
           if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return [s for s, _ in pts], [v for _, v in pts]


def _nonfinite_as_nan(row: dict) -> dict:
  """A row whose `nonfinite` list names its null values (strict JSON has no NaN): those as NaN, the list dropped."""
  names = row.pop("nonfinite", None)
  for name in names if isinstance(names, list) else ():
    if isinstance(name, str) and name in row and row[name] is None:
      row[name] = math.nan
  return row


def read_metrics(rundir: str) -> tuple[list[dict], int]:
  """`metrics.jsonl` rows and `eval/<step>.json` (from `vlmjax eval`) merged by step, sorted, and the
  number of lines / files skipped as unreadable (a line cut short by a killed run).

  A step's rows merge (its train row, eval row and eval file); a step logged twice (a run resumed by
  a vlmjax older than the one that drops re-run rows) keeps the later value. A non-finite value is a
  bare NaN / Infinity (older files) or null named in the row's `nonfinite` list (read as NaN).
  """
  by_step: dict[int, dict] = {}
  path = os.path.join(rundir, "metrics.jsonl")
  lines = open(path).read().splitlines() if os.path.isfile(path) else []
  eval_dir = os.path.join(rundir, "eval")
  if os.path.isdir(eval_dir):
    for name in sorted(os.listdir(eval_dir)):
      if name.endswith(".json"):
        lines.append(open(os.path.join(eval_dir, name)).read())
  unreadable = 0
  for line in lines:
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None  # a line cut short by a killed run: counted, shown in the report
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      by_step.setdefault(row["step"], {}).update(_nonfinite_as_nan(row))
    else:
      unreadable += 1
  return [by_step[s] for s in sorted(by_step)], unreadable


def natural_key(name: str) -> list:
  """Sort key comparing the numbers inside names as numbers: i2t_r1 < i2t_r5 < i2t_r10."""
  return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _load(workdir: str, name: str) -> tuple | None:
  """(status or None, config ({} when none), rows, unreadable) of WORKDIR/name; None if it is no run."""
  rundir = os.path.join(workdir, name)
  status_path = os.path.join(rundir, run_status.FILE)
  status = run_status.load_json(status_path, run_status.FIX)
  if status is None and not os.path.isfile(os.path.join(rundir, "metrics.jsonl")):
    return None
  if status is not None:
    run_status.check_keys(status, status_path)
  cfg = run_status.load_json(os.path.join(rundir, "config.json"), CONFIG_FIX) or {}
  return (status, cfg, *read_metrics(rundir))


def collect(workdir: str) -> list[RunResult]:
  """Every run directory under `workdir` (one holding status.json or metrics.jsonl), in sweep order;
  the runs without a status.json after, named by `name_runs`: done when they logged up to their
  total_steps, stopped when not (killed, or still training), unknown without a config.json."""
  if not os.path.isdir(workdir):
    raise ConfigError(f"report: workdir {workdir!r} does not exist")
  loaded = {d: run for d in sorted(os.listdir(workdir)) if (run := _load(workdir, d)) is not None}
  if not loaded:
    raise ConfigError(f"report: no runs in {workdir!r} (no subdirectory holds status.json or metrics.jsonl)")
  names = run_status.name_runs({d: cfg for d, (status, cfg, _, _) in loaded.items() if status is None})
  runs = []
  for d, (status, cfg, rows, unreadable) in loaded.items():
    total = cfg["total_steps"] if cfg else None  # a run's config.json always has it; {}: no config.json
    if status is not None:
      runs.append(RunResult(d, status["group"], status["index"], status["seed"], status["state"],
                            status.get("error"), status.get("seconds"), total, rows, unreadable, d))
      continue
    state = run_status.state_without_sweep(rows[-1]["step"] if rows else None, total)
    runs.append(RunResult(*names[d], math.inf, cfg["seed"] if cfg else None, state, None, None, total, rows, unreadable, d))
  return sorted(runs, key=lambda r: (r.index, natural_key(r.name)))


def parse_metric(spec: str) -> tuple[str, str]:
  """`eval/x/top1` or `eval/x/top1:max` -> (name, "min" | "max"); losses and errors default to min."""
  name, _, mode = spec.partition(":")
  if mode and mode not in ("min", "max"):
    raise ConfigError(f"report: --metric {spec!r}: the part after ':' must be min or max")
  if not mode:
    mode = "min" if any(w in name.rsplit("/", 1)[-1] for w in LOWER_IS_BETTER) else "max"
  return name, mode


def default_metrics(runs: list[RunResult]) -> list[str]:
  """The train losses (`train/*loss`) and every eval metric but timings, in natural order; not the
  bookkeeping (train/lr, train/grad_norm, data/*, throughput, ...)."""
  present = {k for r in runs for row in r.rows for k in row}
  losses = sorted((k for k in present if k.startswith("train/") and k.endswith("loss")
                   and k not in DEFAULT_TRAIN_METRICS), key=natural_key)
  evals = sorted((k for k in present if k.startswith("eval/") and not k.endswith("/seconds")), key=natural_key)
  return [m for m in DEFAULT_TRAIN_METRICS if m in present] + losses + evals


def final_and_best(run: RunResult, metric: str, mode: str, last: int = 1) -> tuple[float | None, float | None]:
  """Final = mean of the last `last` logged values (1: the last one), NaN if one of them is NaN;
  best over the finite logged values (None when there are none)."""
  _, values = run.series(metric)
  if not values:
    return None, None
  tail = values[-last:]
  finite = [v for v in values if math.isfinite(v)]
  best = (min(finite) if mode == "min" else max(finite)) if finite else None
  return sum(tail) / len(tail), best


def mean_std(values: list[float]) -> str:
  """`m ± s` (sample std) over the values present; `-` when none; a single value alone; `nan` or
  `inf` alone when a value is not finite."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  mean = sum(values) / len(values)
  if len(values) == 1 or not math.isfinite(mean):
    return f"{mean:.4f}"
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  return f"{mean:.4f} ± {std:.4f}"


def groups_of(runs: list[RunResult]) -> dict[str, list[RunResult]]:
  out: dict[str, list[RunResult]] = {}
  for run in runs:
    out.setdefault(run.group, []).append(run)
  return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _short(metric: str) -> str:
  return metric.removeprefix("train/")


def _why_excluded(run: RunResult) -> str:
  steps = f"step {run.last_step if run.last_step is not None else '-'}/{run.total_steps or '?'}"
  return f"`{run.name}` ({run.state}, {steps})"


def _groups_section(runs: list[RunResult], metrics: list[tuple[str, str]], last: int) -> list[str]:
  header = ["group", "runs", "status"] + [f"{_short(m)} {c}" for m, mode in metrics
                                          for c in ("final", f"best ({mode})")]
  rows = []
  for group, members in groups_of(runs).items():
    states = sorted({r.state for r in members})
    row = [group or "(base)", str(len(members)), ", ".join(f"{sum(r.state == s for r in members)} {s}" for s in states)]
    for metric, mode in metrics:
      pairs = [final_and_best(r, metric, mode, last) for r in members if r.finished]
      for values in ([f for f, _ in pairs if f is not None], [b for _, b in pairs if b is not None]):
        row.append(f"{mean_std(values)} (n={len(values)})" if values else "-")
    rows.append(row)
  lines = ["## Groups", ""] + _table(header, rows) + [""]
  excluded = [r for r in runs if not r.finished]
  if excluded:
    lines += [f"Not in the group values ({len(excluded)} of {len(runs)} runs, unfinished): "
              + ", ".join(_why_excluded(r) for r in excluded) + ".", ""]
  return lines


def _runs_section(runs: list[RunResult], metrics: list[tuple[str, str]], last: int) -> list[str]:
  header = ["run", "status", "steps", "time"] + [f"{_short(m)} final / best" for m, _ in metrics]
  rows = []
  for r in runs:
    steps = f"{r.last_step if r.last_step is not None else '-'}/{r.total_steps or '?'}"
    row = [r.name, r.state, steps, f"{r.seconds:.0f}s" if r.seconds is not None else "-"]
    for metric, mode in metrics:
      final, best = final_and_best(r, metric, mode, last)
      row.append("-" if final is None else f"{final:.4f} / {'-' if best is None else f'{best:.4f}'}")
    rows.append(row)
  lines = ["## Runs", ""] + _table(header, rows) + [""]
  named = [r for r in runs if r.dir and r.name != r.dir]
  if named:
    lines += ["Runs trained outside a sweep are named by the config.json keys that differ between them; their "
              "directories: " + ", ".join(f"`{r.name}` in `{r.dir}/`" for r in named) + ".", ""]
  unreadable = [r for r in runs if r.unreadable]
  if unreadable:
    lines += ["Skipped as unreadable (not a JSON object with a `step`; a line cut short by a killed run): "
              + ", ".join(f"`{r.name}` {r.unreadable} line(s) of metrics.jsonl / eval/*.json" for r in unreadable)
              + ".", ""]
  return lines


def markdown(workdir: str, runs: list[RunResult], metrics: list[tuple[str, str]], plots: list[str],
             last: int = 1) -> str:
  final = "last logged value" if last == 1 else f"mean of the last {last} logged values"
  lines = [f"# Report: {workdir}", "",
           f"{len(runs)} runs in {len(groups_of(runs))} groups; {sum(r.state == 'done' for r in runs)} done. "
           "runs = runs in the group (one per seed); group values are mean ± sample std over the group's "
           "finished runs (done; without a sweep status, logged up to total_steps; `stopped`: it did not, killed "
           f"or still training) that logged the metric, (n=K) of them; final = {final}, nan if the run diverged; "
           "best = min (losses) or max (other metrics) over the finite logged values.", ""]
  lines += _groups_section(runs, metrics, last) + _runs_section(runs, metrics, last)
  failed = [r for r in runs if r.state == "failed"]
  if failed:
    lines += ["## Failures", ""] + [f"- `{r.name}`: {r.error or 'no error recorded'} (full output: "
                                    f"`{r.dir or r.name}/output.txt`)" for r in failed] + [""]
  if plots:
    lines += ["## Plots", "", "Per group (a colour): a thick line, the mean over its finished runs, with a band "
              "(error bars where points are few) of ± sample std; thin lines: its runs, dotted when unfinished (not "
              "in the mean). Few points get hollow markers, a shape per group, nudged sideways so that groups at "
              "the same step stay visible; `final nan`: diverged.", ""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
  return "\n".join(lines)


def group_curve(members: list[RunResult], metric: str) -> tuple[list[int], list[float], list[float]]:
  """Steps, mean and sample std (0 for a single value) of the runs' values logged at each step; NaN
  (a gap in the line) where one of them is not finite."""
  by_step: dict[int, list[float]] = {}
  for run in members:
    for step, value in zip(*run.series(metric)):
      by_step.setdefault(step, []).append(value)
  steps = sorted(by_step)
  means = [statistics.fmean(by_step[s]) if all(map(math.isfinite, by_step[s])) else math.nan for s in steps]
  stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 and math.isfinite(m) else 0.0
          for s, m in zip(steps, means)]
  return steps, means, stds


def _group_label(group: str, members: list[RunResult], counted: list[RunResult], metric: str, last: int) -> str:
  unfinished = sum(not r.finished for r in members)
  notes = [f"mean ± std of {len(counted)}"] if len(counted) > 1 else []
  if unfinished:
    notes.append(f"{unfinished} unfinished" + (", not in the mean" if counted[0].finished else ", none finished"))
  finals = [final_and_best(r, metric, "min", last)[0] for r in members]
  diverged = sum(f is not None and not math.isfinite(f) for f in finals)
  if diverged:
    notes.append(f"{diverged} final nan")
  return (group or "(base)") + (f" ({'; '.join(notes)})" if notes else "")


def figure(workdir: str, runs: list[RunResult], metric: str, last: int = 1):
  """The matplotlib figure of `metric` against integer steps (None when no run logged it). Per group
  (a colour): the mean over its finished runs (all its runs when none finished), a ± std band (error
  bars where there are few points, as evals) and one legend entry; each run thin and faint (dotted
  when unfinished). Few points get hollow markers, a shape and size per group, nudged sideways per
  group, so that groups sharing a step (an eval at the last step) stay visible."""
  if not any(r.series(metric)[0] for r in runs):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator

  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
  colors = plt.get_cmap("tab10").colors
  groups = [(g, m) for g, m in groups_of(runs).items() if any(r.series(metric)[0] for r in m)]
  steps = [s for r in runs for s in r.series(metric)[0]]
  nudge = (max(steps) - min(steps)) * 0.01 or 0.06  # one step only: the axis spans 2 steps around it
  for g, (group, members) in enumerate(groups):
    color, dx = colors[g % len(colors)], (g - (len(groups) - 1) / 2) * nudge
    logged = [r for r in members if r.series(metric)[0]]
    counted = [r for r in logged if r.finished] or logged
    xs, mean, std = group_curve(counted, metric)
    few = len(xs) < 20
    for run in members:
      s, v = run.series(metric)
      ax.plot([x + dx for x in s], [y if math.isfinite(y) else math.nan for y in v], color=color,
              lw=0.8, alpha=0.35, ls="-" if run.finished else ":", marker="." if few else None, ms=3)
    xs = [x + dx for x in xs]
    style = dict(color=color, lw=2, label=_group_label(group, members, counted, metric, last))
    if few:
      ax.errorbar(xs, mean, yerr=std if len(counted) > 1 else None, marker=MARKERS[g % len(MARKERS)],
                  ms=10 - 2 * (g % 4), mfc="none", mew=1.5, capsize=3, **style)
    else:
      ax.plot(xs, mean, **style)
      if len(counted) > 1:
        ax.fill_between(xs, [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)],
                        color=color, alpha=0.15, lw=0)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if max(steps) == min(steps):
    ax.set_xlim(steps[0] - 1, steps[0] + 1)
  ax.set(xlabel="step", ylabel=metric, title=f"{metric} ({os.path.basename(os.path.abspath(workdir))})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  return fig


def plot(workdir: str, runs: list[RunResult], metric: str, last: int = 1) -> str | None:
  """Writes `figure`'s PNG into `workdir`; returns its file name (None when no run logged `metric`)."""
  fig = figure(workdir, runs, metric, last)
  if fig is None:
    return None
  import matplotlib.pyplot as plt
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric) + ".png"
  fig.savefig(os.path.join(workdir, name))
  plt.close(fig)
  return name


def write_report(workdir: str, metric_specs: list[str] | None = None, last: int = 1) -> str:
  """Writes WORKDIR/report.md and its plots; returns the markdown."""
  if last < 1:
    raise ConfigError(f"report: --last must be at least 1, got {last}")
  runs = collect(workdir)
  if metric_specs:
    metrics = [parse_metric(m) for m in metric_specs]
    present = {k for r in runs for row in r.rows for k in row}
    missing = [m for m, _ in metrics if m not in present]
    if missing:
      known = ", ".join(sorted(present - {"step"})) or "none"
      raise ConfigError(f"report: no run logged {missing[0]!r}; logged metrics: {known}")
  else:
    metrics = [parse_metric(m) for m in default_metrics(runs)]
  plot_metrics = [m for m, _ in metrics]
  if "train/loss" not in plot_metrics:
    plot_metrics.insert(0, "train/loss")
  plots = [p for p in (plot(workdir, runs, m, last) for m in plot_metrics) if p]
  text = markdown(workdir, runs, metrics, plots, last)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  return text
