"""Metric writers: a live console line, `metrics.jsonl`, TensorBoard events under `tb/`, and
Weights & Biases when `cfg.wandb.project` is set.

Only process 0 writes. `Writer.write` takes metrics already fetched to the host.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import jax
import ml_collections


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Writer:
  def __init__(self, workdir: str, *, total_steps: int, batch_size: int, start_step: int,
               wandb_cfg: ml_collections.ConfigDict | None = None, run_config: dict | None = None):
    self.enabled = jax.process_index() == 0
    self.total_steps, self.batch_size = total_steps, batch_size
    self.start_step = start_step
    self.start_time = self.last_time = time.time()
    self.last_step = start_step
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

  def write(self, step: int, metrics: dict, extra: dict | None = None) -> dict:
    """Logs host metrics of `step` as `train/<name>`, and `extra` (e.g. `data/...`, `eval/...`)
    under its own names; adds `train/samples_per_sec` when a rate is known."""
    now = time.time()
    row = {"step": step, **{f"train/{k}": float(v) for k, v in metrics.items()},
           **{k: float(v) for k, v in (extra or {}).items()}}
    rate = None
    if self.last is not None and step > self.last_step:  # the first window includes compilation
      rate = (step - self.last_step) * self.batch_size / (now - self.last_time)
      row["train/samples_per_sec"] = rate
      self.rates.append(rate)
    self.last_step, self.last_time = step, now
    self.first = self.first or row
    self.last = row
    if self.enabled:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)
      if self._wandb is not None:
        self._wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)
      eta = ((self.total_steps - step) * self.batch_size / rate) if rate else None
      parts = [f"step {step:>6}/{self.total_steps}", f"loss {row['train/loss']:.4f}"]
      parts += [f"{k[6:]} {row[k]:.4f}" for k in ("train/contrastive_loss", "train/caption_loss") if k in row]
      if row.get("data/skipped"):
        parts.append(f"skipped {int(row['data/skipped'])}")
      parts += [f"{rate:,.0f} samples/s" if rate else "compiling+first step",
                f"ETA {_duration(eta)}" if eta is not None else "ETA -"]
      print(" | ".join(parts), flush=True)
    return row

  def write_evals(self, step: int, results: dict) -> None:
    """Logs evaluator results (`eval/<name>/<metric>`) of `step` as their own row and console line."""
    row = {"step": step, **{k: float(v) for k, v in results.items()}}
    self.evals = row
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for k, v in results.items():
      self._tb.add_scalar(k, v, step)
    if self._wandb is not None:
      self._wandb.log(dict(results), step=step)
    by_name: dict[str, list[str]] = {}
    for k, v in results.items():  # eval/<name>/<metric>: one console line per evaluator
      _, name, metric = k.split("/", 2)
      if metric != "seconds":
        by_name.setdefault(name, []).append(f"{metric} {v:.4f}")
    for name, shown in by_name.items():
      seconds = results.get(f"eval/{name}/seconds", 0.0)
      print(f"eval   {step:>6}/{self.total_steps} | {name}: {', '.join(shown)} ({seconds:.1f}s)", flush=True)

  def summary(self) -> dict:
    """The closing summary: steps, wall time, first and last loss, mean throughput."""
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
      print(f"done: steps {self.start_step}->{self.last_step} in {_duration(out['seconds'])} | "
            f"loss {out['first_loss']:.4f} -> {out['final_loss']:.4f} ({drop:.1f}% lower) | {rate}",
            flush=True)
    return out

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      if self._wandb is not None:
        self._wandb.finish()


def start_wandb(cfg: ml_collections.ConfigDict, workdir: str, run_config: dict):
  """A wandb run for `workdir`: the one its `wandb.json` names when resuming, else a new one
  (named `cfg.name` or the workdir's name), with the resolved config attached."""
  try:
    import wandb  # noqa: PLC0415 (optional)
  except ImportError:
    from vlmjax.errors import ConfigError  # noqa: PLC0415
    raise ConfigError(f"wandb.project={cfg.project!r} needs the wandb package: pip install wandb "
                      "(or set --config.wandb.project= to log to metrics.jsonl and TensorBoard only)") from None
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
