"""Sweep reports: every run's final and best metrics, mean ± std over seeds, status, and plots.

`write_report(workdir)` reads each `WORKDIR/<run>/` (`metrics.jsonl`, `status.json` from the sweep
runner, `config.json` from training, `eval/<step>.json` from `vlmjax eval`) and writes `WORKDIR/report.md` plus one PNG per metric.
Runs that differ only in seed form a group (the sweep's run name without `seed=`). Group statistics
count finished runs only (`done` in the sweep; without a status.json, a run that logged its last step);
the others are listed under the table. A run's final value is its last logged one even when that is
NaN or inf (a diverged run); only "best" skips non-finite values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from vlmjax.errors import ConfigError
from vlmjax.sweeps import status as run_status

DEFAULT_TRAIN_METRICS = ("train/loss", "train/contrastive_loss", "train/caption_loss")
LOWER_IS_BETTER = ("loss", "perplexity", "error")


@dataclasses.dataclass
class RunResult:
  name: str
  group: str
  index: float          # sweep order (runs without a sweep status sort after, by name)
  seed: int | None
  state: str            # done | failed | running | unknown (no status.json)
  error: str | None
  seconds: float | None
  total_steps: int | None
  rows: list[dict]      # metrics.jsonl rows merged by step, sorted by step
  unreadable: int = 0   # metrics.jsonl lines / eval files that were not JSON objects with a step (skipped)

  @property
  def last_step(self) -> int | None:
    return self.rows[-1]["step"] if self.rows else None

  @property
  def finished(self) -> bool:
    """Counted in group statistics: done in its sweep; without a status.json, logged up to total_steps."""
    if self.state == "unknown":
      return None not in (self.total_steps, self.last_step) and self.last_step >= self.total_steps
    return self.state == "done"

  def series(self, metric: str) -> tuple[list[int], list[float]]:
    """Steps and values of `metric`, non-finite ones (a NaN loss) included."""
    pts = [(r["step"], float(r[metric])) for r in self.rows
           if isinstance(r.get(metric), (int, float)) and not isinstance(r[metric], bool)]
    return [s for s, _ in pts], [v for _, v in pts]


def read_metrics(rundir: str) -> tuple[list[dict], int]:
  """`metrics.jsonl` rows and `eval/<step>.json` (from `vlmjax eval`) merged by step, sorted, and the
  number of lines / files skipped as unreadable (a line cut short by a killed run).

  A step's rows merge (its train row, eval row and eval file); a step logged twice (a run resumed by
  a vlmjax older than the one that drops re-run rows) keeps the later value.
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
      by_step.setdefault(row["step"], {}).update(row)
    else:
      unreadable += 1
  return [by_step[s] for s in sorted(by_step)], unreadable




def collect(workdir: str) -> list[RunResult]:
  """Every run directory under `workdir` (one holding status.json or metrics.jsonl), in sweep order."""
  if not os.path.isdir(workdir):
    raise ConfigError(f"report: workdir {workdir!r} does not exist")
  runs = []
  for name in sorted(os.listdir(workdir)):
    rundir = os.path.join(workdir, name)
    status_path = os.path.join(rundir, run_status.FILE)
    status = run_status.load_json(status_path, run_status.FIX)
    metrics_path = os.path.join(rundir, "metrics.jsonl")
    if status is None and not os.path.isfile(metrics_path):
      continue
    cfg = run_status.load_json(os.path.join(rundir, "config.json"),
                    "`vlmjax train` writes it when the run starts: run that run again, or delete it") or {}
    if status is not None:
      run_status.check_keys(status, status_path)
      group, index, seed = status["group"], status["index"], status["seed"]
      state, error, seconds = status["state"], status.get("error"), status.get("seconds")
    else:  # trained outside `vlmjax sweep`: group by the name without its seed
      group = re.sub(r"(^|,)seed=-?\d+", "", name).strip(",")
      index, state, error, seconds = math.inf, "unknown", None, None
      seed = cfg["seed"] if cfg else None  # a run's config.json holds every key; a run without one: unknown
    rows, unreadable = read_metrics(rundir)
    total_steps = cfg["total_steps"] if cfg else None
    runs.append(RunResult(name, group, index, seed, state, error, seconds, total_steps, rows, unreadable))
  if not runs:
    raise ConfigError(f"report: no runs in {workdir!r} (no subdirectory holds status.json or metrics.jsonl)")
  return sorted(runs, key=lambda r: (r.index, r.name))


def parse_metric(spec: str) -> tuple[str, str]:
  """`eval/x/top1` or `eval/x/top1:max` -> (name, "min" | "max"); losses and errors default to min."""
  name, _, mode = spec.partition(":")
  if mode and mode not in ("min", "max"):
    raise ConfigError(f"report: --metric {spec!r}: the part after ':' must be min or max")
  if not mode:
    mode = "min" if any(w in name.rsplit("/", 1)[-1] for w in LOWER_IS_BETTER) else "max"
  return name, mode


def default_metrics(runs: list[RunResult]) -> list[str]:
  present = {k for r in runs for row in r.rows for k in row}
  evals = sorted(k for k in present if k.startswith("eval/") and not k.endswith("/seconds"))
  return [m for m in DEFAULT_TRAIN_METRICS if m in present] + evals  # eval timings left out


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


def markdown(workdir: str, runs: list[RunResult], metrics: list[tuple[str, str]], plots: list[str],
             last: int = 1) -> str:
  groups = groups_of(runs)
  final = "last logged value" if last == 1 else f"mean of the last {last} logged values"
  finished = [r for r in runs if r.finished]
  lines = [f"# Sweep report: {workdir}", "",
           f"{len(runs)} runs in {len(groups)} groups; {sum(r.state == 'done' for r in runs)} done. "
           "runs = runs in the group (one per seed); group values are mean ± sample std over the group's "
           "finished runs (done; without a sweep status, logged up to total_steps) that logged the metric, "
           f"(n=K) of them; final = {final}, nan if the run diverged; best = min (losses) or max (other metrics) "
           "over the finite logged values.", ""]
  header = ["group", "runs", "status"]
  for metric, mode in metrics:
    header += [f"{_short(metric)} final", f"{_short(metric)} best ({mode})"]
  rows = []
  for group, members in groups.items():
    states = sorted({r.state for r in members})
    status = ", ".join(f"{sum(r.state == s for r in members)} {s}" for s in states)
    row = [group or "(base)", str(len(members)), status]
    for metric, mode in metrics:
      pairs = [final_and_best(r, metric, mode, last) for r in members if r.finished]
      for values in ([f for f, _ in pairs if f is not None], [b for _, b in pairs if b is not None]):
        row.append(f"{mean_std(values)} (n={len(values)})" if values else "-")
    rows.append(row)
  lines += ["## Groups", ""] + _table(header, rows) + [""]
  excluded = [r for r in runs if not r.finished]
  if excluded:
    lines += [f"Not in the group values ({len(excluded)} of {len(runs)} runs, unfinished): "
              + ", ".join(_why_excluded(r) for r in excluded) + ".", ""]

  header = ["run", "status", "steps", "time"] + [f"{_short(m)} final / best" for m, _ in metrics]
  rows = []
  for r in runs:
    steps = f"{r.last_step if r.last_step is not None else '-'}/{r.total_steps or '?'}"
    time_ = f"{r.seconds:.0f}s" if r.seconds is not None else "-"
    row = [r.name, r.state, steps, time_]
    for metric, mode in metrics:
      final, best = final_and_best(r, metric, mode, last)
      row.append("-" if final is None else f"{final:.4f} / {'-' if best is None else f'{best:.4f}'}")
    rows.append(row)
  lines += ["## Runs", ""] + _table(header, rows) + [""]
  unreadable = [r for r in runs if r.unreadable]
  if unreadable:
    lines += ["Skipped as unreadable (not a JSON object with a `step`; a line cut short by a killed run): "
              + ", ".join(f"`{r.name}` {r.unreadable} line(s) of metrics.jsonl / eval/*.json" for r in unreadable)
              + ".", ""]

  failed = [r for r in runs if r.state == "failed"]
  if failed:
    lines += ["## Failures", ""]
    lines += [f"- `{r.name}`: {r.error or 'no error recorded'} (full output: `{r.name}/log.txt`)"
              for r in failed] + [""]
  if plots:
    lines += ["## Plots", "", "Faint lines: unfinished runs, not in the group values; a line that stops early "
              "and is marked `final nan` diverged.", ""]
    lines += [f"![{p}]({p})" for p in plots] + [""]
  return "\n".join(lines)


def plot(workdir: str, runs: list[RunResult], metric: str, last: int = 1) -> str | None:
  """One PNG of `metric` against step: a colour per group, a line style per seed; unfinished runs
  faint, runs whose final value is not finite labelled so. Returns its file name."""
  if not any(r.series(metric)[0] for r in runs):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
  colors = plt.get_cmap("tab10").colors
  styles = ("-", "--", ":", "-.")
  for g, (group, members) in enumerate(groups_of(runs).items()):
    for k, run in enumerate(members):
      steps, values = run.series(metric)
      if not steps:
        continue
      final, _ = final_and_best(run, metric, "min", last)
      notes = ([] if run.finished else [f"{run.state}, not in group values"]) + \
              ([] if math.isfinite(final) else [f"final {final}"])
      label = run.name + (f" ({'; '.join(notes)})" if notes else "")
      ax.plot(steps, [v if math.isfinite(v) else math.nan for v in values], color=colors[g % len(colors)],
              linestyle=styles[k % len(styles)], alpha=1.0 if run.finished else 0.35,
              marker="." if len(steps) < 20 else None, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} ({os.path.basename(os.path.abspath(workdir))})")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
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
