"""Metric writers: a live console line, `metrics.jsonl`, TensorBoard events under `tb/`, and
Weights & Biases when `cfg.wandb.project` is set.

Only process 0 writes. `Writer.write` takes metrics already fetched to the host. Each row of
metrics.jsonl is strict JSON: a non-finite value is written as `null` and named in the row's
`nonfinite` list (`strict`); TensorBoard gets the finite values only.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid

import jax
import ml_collections

from vlmjax import progress


def strict(row: dict) -> dict:
  """`row` as strict JSON takes it: a non-finite value becomes None (JSON has no NaN or Infinity)
  and its key is listed under "nonfinite"."""
  bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
  if not bad:
    return row
  return {**{k: (None if k in bad else v) for k, v in row.items()}, "nonfinite": bad}


class Writer:
  """Writes the rows of one `train` call. `flops_per_step` (model FLOPs of one global step) and
  `peak_flops` (of all devices together) give `train/mfu` when both are known."""

  def __init__(self, workdir: str, *, total_steps: int, batch_size: int, start_step: int,
               wandb_cfg: ml_collections.ConfigDict | None = None, run_config: dict | None = None,
               flops_per_step: float | None = None, peak_flops: float | None = None):
    self.enabled = jax.process_index() == 0
    self.total_steps, self.batch_size = total_steps, batch_size
    self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
    self.start_step = start_step
    self.start_time = self.last_time = time.time()
    self.last_step, self.last_data_seconds = start_step, 0.0
    self.first: dict | None = None
    self.last: dict | None = None
    self.rates: list[float] = []
    self._jsonl = self._tb = self._wandb = None
    self.evals: dict | None = None
    if self.enabled:
      if wandb_cfg is not None and wandb_cfg.project:  # first: a missing package fails with nothing opened
        self._wandb = start_wandb(wandb_cfg, workdir, run_config or {})
      path = os.path.join(workdir, "metrics.jsonl")
      dropped = drop_rows_after(path, start_step)
      if dropped:
        print(f"{path}: dropped {dropped} rows after step {start_step}, logged by a run that stopped before "
              f"saving them; they are logged again as training redoes those steps", flush=True)
      self._jsonl = open(path, "a")
      from tensorboardX import SummaryWriter  # imported lazily: heavy, and only process 0 needs it
      # purge_step: TensorBoard hides events the interrupted run wrote after the checkpoint resumed from.
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)

  def write(self, step: int, metrics: dict, extra: dict | None = None, *, at: float | None = None,
            data_seconds: float | None = None) -> dict:
    """Logs host metrics of `step` as `train/<name>`, and `extra` (e.g. `data/...`) under its own
    names. `at` is when step `step`'s batch was handed to the device (default: now) and
    `data_seconds` the total time the loop has waited for input so far: from them, over the steps
    since the last row, `train/samples_per_sec`, `train/step_time` (s), `train/data_time` (s per
    step spent waiting for input) and `train/mfu`."""
    now = time.time() if at is None else at
    row = {"step": step, **{f"train/{k}": float(v) for k, v in metrics.items()},
           **{k: float(v) for k, v in (extra or {}).items()}}
    rate = None
    if self.last is not None and step > self.last_step:  # the first window holds the first step's setup
      steps, seconds = step - self.last_step, max(now - self.last_time, 1e-9)
      rate = steps * self.batch_size / seconds
      row["train/samples_per_sec"], row["train/step_time"] = rate, seconds / steps
      if data_seconds is not None:
        row["train/data_time"] = (data_seconds - self.last_data_seconds) / steps
      if self.flops_per_step and self.peak_flops:
        row["train/mfu"] = self.flops_per_step * steps / seconds / self.peak_flops
      self.rates.append(rate)
    self.last_step, self.last_time = step, now
    if data_seconds is not None:
      self.last_data_seconds = data_seconds
    self.first = self.first or row
    self.last = row
    if self.enabled:
      self._record(step, row)
      print(self._console_line(step, row, rate), flush=True)
    return row

  def _record(self, step: int, row: dict) -> None:
    """One row to metrics.jsonl (strict JSON), TensorBoard (finite values only: it has no use for
    the others and warns about each) and wandb."""
    self._jsonl.write(json.dumps(strict(row)) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      if k != "step" and math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

  def _console_line(self, step: int, row: dict, rate: float | None) -> str:
    eta = ((self.total_steps - step) * self.batch_size / rate) if rate else None
    parts = [f"step {step:>6}/{self.total_steps}", f"loss {row['train/loss']:.4f}"]
    parts += [f"{k[6:]} {row[k]:.4f}" for k in ("train/contrastive_loss", "train/caption_loss") if k in row]
    if row.get("data/skipped"):
      parts.append(f"skipped {int(row['data/skipped'])}")
    parts += [f"{rate:,.0f} samples/s" if rate else "first step",
              f"ETA {progress.duration(eta)}" if eta is not None else "ETA -"]
    if row.get("train/data_time", 0.0) > 0.1 * row.get("train/step_time", math.inf):  # input-bound
      parts.append(f"waiting for data {100 * row['train/data_time'] / row['train/step_time']:.0f}%")
    if "train/mfu" in row:
      parts.append(f"MFU {100 * row['train/mfu']:.1f}%")
    return " | ".join(parts)

  def write_evals(self, step: int, results: dict) -> None:
    """Logs evaluator results (`eval/<name>/<metric>`) of `step` as their own row and console line."""
    row = {"step": step, **{k: float(v) for k, v in results.items()}}
    self.evals = row
    if not self.enabled:
      return
    self._record(step, row)
    by_name: dict[str, list[str]] = {}
    for k, v in results.items():  # eval/<name>/<metric>: one console line per evaluator
      _, name, metric = k.split("/", 2)
      if metric != "seconds":
        by_name.setdefault(name, []).append(f"{metric} {v:.4f}")
    for name, shown in by_name.items():
      seconds = results.get(f"eval/{name}/seconds", 0.0)
      print(f"eval   {step:>6}/{self.total_steps} | {name}: {', '.join(shown)} ({seconds:.1f}s)", flush=True)

  def summary(self, stopped: str | None = None) -> dict:
    """The closing summary: steps, wall time, first and last loss, mean throughput; its console
    line starts `done:` only for a run that reached `total_steps`, else `stopped (<why>) at step N`."""
    out = {"steps": (self.start_step, self.last_step), "seconds": time.time() - self.start_time}
    if self.first and self.last:
      out["first_loss"], out["final_loss"] = self.first["train/loss"], self.last["train/loss"]
    if self.rates:
      out["samples_per_sec"] = sum(self.rates) / len(self.rates)
    if self.evals:
      out["evals"] = {k: v for k, v in self.evals.items() if k != "step"}
    if self.enabled and self.first:
      drop = 100 * (1 - out["final_loss"] / out["first_loss"]) if out["first_loss"] else 0.0
      rate = f"{out['samples_per_sec']:,.0f} samples/s" if self.rates else "-"
      head = "done:" if stopped is None else f"stopped ({stopped}) at step {self.last_step}/{self.total_steps}:"
      print(f"{head} steps {self.start_step}->{self.last_step} in {progress.duration(out['seconds'])} | "
            f"loss {out['first_loss']:.4f} -> {out['final_loss']:.4f} ({drop:.1f}% lower) | {rate}",
            flush=True)
    return out

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      if self._wandb is not None:
        self._wandb.finish()


def check_wandb(cfg: ml_collections.ConfigDict) -> None:
  """With `wandb.project` set, the wandb package must be installed (checked before the workdir is made)."""
  if not cfg.project:
    return
  try:
    import wandb  # noqa: F401, PLC0415 (optional)
  except ImportError:
    from vlmjax.errors import ConfigError  # noqa: PLC0415
    raise ConfigError(f"wandb.project={cfg.project!r} needs the wandb package: pip install wandb "
                      "(or set --config.wandb.project= to log to metrics.jsonl and TensorBoard only)") from None


def start_wandb(cfg: ml_collections.ConfigDict, workdir: str, run_config: dict):
  """A wandb run for `workdir`: the one its `wandb.json` names when resuming, else a new one
  (named `cfg.name` or the workdir's name), with the resolved config attached."""
  check_wandb(cfg)
  import wandb  # noqa: PLC0415 (optional)
  path = os.path.join(workdir, "wandb.json")
  stored = {}
  if os.path.isfile(path):
    with open(path) as f:
      stored = json.load(f)
  run_id = stored.get("id") or uuid.uuid4().hex[:12]
  run = wandb.init(project=cfg.project, entity=cfg.entity or None, name=cfg.name or os.path.basename(
      os.path.abspath(workdir)), id=run_id, resume="allow", dir=workdir, config=run_config,
      mode=cfg.mode or None)
  if not stored:
    with open(path, "w") as f:
      json.dump({"id": run_id, "project": cfg.project}, f)
  return run


def drop_rows_after(path: str, step: int) -> int:
  """Removes the rows of `path` (metrics.jsonl) logged after `step`, and a last line cut short by a
  kill, so that a run resumed from a checkpoint at `step` leaves one row per step. Returns how many."""
  if not os.path.isfile(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row_step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
      continue
    if row_step <= step:
      keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) == len(lines) and all(line.endswith("\n") for line in lines):
    return 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)
  return len(lines) - len(keep)
