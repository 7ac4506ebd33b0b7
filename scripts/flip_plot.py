"""Accuracy against training FLOPs for the FLIP study (experiments/flip.py): one line per patch-dropout
arm (mean over seeds, a band of +- std), x = the run's training FLOPs up to each evaluation (steps x
batch x `vlmjax info`'s training FLOPs per example at that arm's dropout).

    python scripts/flip_plot.py runs/flip [--out experiments/results/flip_accuracy_vs_flops.png]
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np

METRICS = (("eval/zs/top1", "zero-shot top-1 (32 classes)"), ("eval/ret/i2t_r1", "image->text R@1 (512)"))


def runs(workdir: str) -> dict:
  """{dropout: [(flops at each evaluation [T], {metric: [T]}), ...one per seed]}."""
  from vlmjax import info
  from vlmjax.evals import commands
  out, flops_of = collections.defaultdict(list), {}
  for name in sorted(os.listdir(workdir)):
    run = os.path.join(workdir, name)
    if not os.path.isfile(os.path.join(run, "metrics.jsonl")):
      continue
    cfg = commands.load_config_file(os.path.join(run, "config.json"), ())
    p = float(cfg.model.vision.patch_dropout)
    if p not in flops_of:
      flops_of[p] = info.train_flops(cfg)["train_flops_per_example"]
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    evals = [r for r in rows if METRICS[0][0] in r]
    steps = np.array([r["step"] for r in evals])
    out[p].append((steps * cfg.batch_size * flops_of[p], {m: np.array([r[m] for r in evals]) for m, _ in METRICS}))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("workdir")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "experiments", "results", "flip_accuracy_vs_flops.png"))
  a = ap.parse_args()
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  data = runs(a.workdir)
  fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 3.8))
  for ax, (metric, title) in zip(axes, METRICS):
    for p, seeds in sorted(data.items()):
      x = seeds[0][0] / 1e12
      ys = np.stack([s[1][metric] for s in seeds])
      mean, std = ys.mean(0), ys.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(x))
      ax.plot(x, mean, marker="o", label=f"patch dropout {p:g} (n={len(seeds)})")
      ax.fill_between(x, mean - std, mean + std, alpha=0.2)
      print(f"{metric} p={p:g}: " + ", ".join(f"{xi:.2f} TFLOP: {m:.4f}" for xi, m in zip(x, mean)))
    ax.set_xlabel("training TFLOP (model FLOPs, forward + backward)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(a.out, dpi=110)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
