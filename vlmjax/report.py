"""Sweep reports: every run's final and best metrics, mean ± std over seeds, status, and plots.

`write_report(workdir)` reads each `WORKDIR/<run>/` (`metrics.jsonl`, `status.json` from the sweep
runner, `config.json` from training, `eval/<step>.json` from `vlmjax eval`) and writes `WORKDIR/report.md` plus one PNG per metric.
Runs that differ only in seed form a group (the sweep's run name without `seed=`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

from vlmjax.config import ConfigError

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

  @property
  def last_step(self) -> int | None:
    return self.rows[-1]["step"] if self.rows else None

  def series(self, metric: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[metric]) for r in self.rows if isinstance(r.get(metric), (int, float))]
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    return [s for s, _ in pts], [v for _, v in pts]


def read_metrics(rundir: str) -> list[dict]:
  """`metrics.jsonl` rows and `eval/<step>.json` (from `vlmjax eval`) merged by step, sorted.

  A resumed run re-logs the steps after its last checkpoint: the later value wins.
  """
  by_step: dict[int, dict] = {}
  path = os.path.join(rundir, "metrics.jsonl")
  lines = open(path).read().splitlines() if os.path.isfile(path) else []
  eval_dir = os.path.join(rundir, "eval")
  if os.path.isdir(eval_dir):
    for name in sorted(os.listdir(eval_dir)):
      if name.endswith(".json"):
        lines.append(open(os.path.join(eval_dir, name)).read())
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a killed run
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      by_step.setdefault(row["step"], {}).update(row)
  return [by_step[s] for s in sorted(by_step)]


def _load_json(path: str) -> dict | None:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect(workdir: str) -> list[RunResult]:
  """Every run directory under `workdir` (one holding status.json or metrics.jsonl), in sweep order."""
  if not os.path.isdir(workdir):
    raise ConfigError(f"report: workdir {workdir!r} does not exist")
  runs = []
  for name in sorted(os.listdir(workdir)):
    rundir = os.path.join(workdir, name)
    status = _load_json(os.path.join(rundir, "status.json"))
    metrics_path = os.path.join(rundir, "metrics.jsonl")
    if status is None and not os.path.isfile(metrics_path):
      continue
    cfg = _load_json(os.path.join(rundir, "config.json")) or {}
    if status is not None:
      group, index, seed = status["group"], status["index"], status["seed"]
      state, error, seconds = status["state"], status.get("error"), status.get("seconds")
    else:  # trained outside `vlmjax sweep`: group by the name without its seed
      group = re.sub(r"(^|,)seed=-?\d+", "", name).strip(",")
      index, state, error, seconds = math.inf, "unknown", None, None
      seed = cfg["seed"] if cfg else None  # a run's config.json holds every key; a run without one: unknown
    runs.append(RunResult(name, group, index, seed, state, error, seconds, cfg["total_steps"] if cfg else None,
                          read_metrics(rundir)))
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
  """Final = mean of the last `last` logged values (1: the last one); best over all logged values."""
  _, values = run.series(metric)
  if not values:
    return None, None
  tail = values[-last:]
  return sum(tail) / len(tail), (min(values) if mode == "min" else max(values))


def mean_std(values: list[float]) -> str:
  """`m ± s` (sample std) over the values present; `-` when none; a single value alone."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  mean = sum(values) / len(values)
  if len(values) == 1:
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


def markdown(workdir: str, runs: list[RunResult], metrics: list[tuple[str, str]], plots: list[str],
             last: int = 1) -> str:
  groups = groups_of(runs)
  final = "last logged value" if last == 1 else f"mean of the last {last} logged values"
  lines = [f"# Sweep report: {workdir}", "",
           f"{len(runs)} runs in {len(groups)} groups; {sum(r.state == 'done' for r in runs)} done. "
           "n = runs in the group (one per seed); values are mean ± sample std over the runs that logged the "
           f"metric; final = {final}, best = min (losses) or max (other metrics) over logged steps.", ""]
  header = ["group", "n", "status"]
  for metric, mode in metrics:
    header += [f"{_short(metric)} final", f"{_short(metric)} best ({mode})"]
  rows = []
  for group, members in groups.items():
    states = sorted({r.state for r in members})
    status = ", ".join(f"{sum(r.state == s for r in members)} {s}" for s in states)
    row = [group or "(base)", str(len(members)), status]
    for metric, mode in metrics:
      pairs = [final_and_best(r, metric, mode, last) for r in members]
      row += [mean_std([f for f, _ in pairs]), mean_std([b for _, b in pairs])]
    rows.append(row)
  lines += ["## Groups", ""] + _table(header, rows) + [""]

  header = ["run", "status", "steps", "time"] + [f"{_short(m)} final / best" for m, _ in metrics]
  rows = []
  for r in runs:
    steps = f"{r.last_step if r.last_step is not None else '-'}/{r.total_steps or '?'}"
    time_ = f"{r.seconds:.0f}s" if r.seconds is not None else "-"
    row = [r.name, r.state, steps, time_]
    for metric, mode in metrics:
      final, best = final_and_best(r, metric, mode, last)
      row.append("-" if final is None else f"{final:.4f} / {best:.4f}")
    rows.append(row)
  lines += ["## Runs", ""] + _table(header, rows) + [""]

  failed = [r for r in runs if r.state == "failed"]
  if failed:
    lines += ["## Failures", ""]
    lines += [f"- `{r.name}`: {r.error} (full output: `{r.name}/log.txt`)" for r in failed] + [""]
  if plots:
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
  return "\n".join(lines)


def plot(workdir: str, runs: list[RunResult], metric: str) -> str | None:
  """One PNG of `metric` against step: a colour per group, a line style per seed. Returns its file name."""
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
      if steps:
        ax.plot(steps, values, color=colors[g % len(colors)], linestyle=styles[k % len(styles)],
                marker="." if len(steps) < 20 else None, label=run.name)
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
  plots = [p for p in (plot(workdir, runs, m) for m in plot_metrics) if p]
  text = markdown(workdir, runs, metrics, plots, last)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(text)
  return text
