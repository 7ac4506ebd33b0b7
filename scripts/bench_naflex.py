"""NaFlex batches measured: padding fraction and step time with and without packing at the same patch
budget per image, and the compile count of a run that draws its budget per batch.

    python scripts/bench_naflex.py                       # configs/siglip2_naflex_tiny.py, batch 64, CPU
    python scripts/bench_naflex.py --batch 128 --steps 10 --config.model.vision.depth=6

Each variant trains on real batches of `synthetic:shapes_wide` (images of five aspect ratios, each on the
largest grid of at most `data.train.max_patches` patches: the padding is what NaFlex leaves, not random):

  unpacked          one image per row of max_patches tokens (B rows)
  packed k, equal   B/k rows of k * max_patches tokens: the unpacked batch's tokens, every image at its grid
  packed k, fewer   the rows cut to the tokens the images use (about 1 - padding): less compute, some images
                    resized to the room left (`data/pack_resized` counts them)

for each k of `--per-row` (default 2 and 4; longer rows cost more attention: it is quadratic in the row).

and prints per variant the padding fraction of its batches, images resized to fit, the median step time
over `--steps` steps (the batches read beforehand: data time is not in it) and images/s. The last line
compiles the step of a run with `data.train.budgets` (two budgets by default) and reports how many steps
were compiled against how many image grids its batches held: one per budget, never one per grid.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vlmjax import config, sharding, train, train_state  # noqa: E402
from vlmjax.data import pipeline  # noqa: E402


def batches(cfg, s, count: int) -> tuple[list[dict], dict]:
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed, image_size=cfg.model.image_size,
                        context_length=cfg.model.text.context_length, vocab_size=cfg.model.text.vocab_size,
                        sharding=s.batch_sharding, patch_size=cfg.model.vision.patch_size)
  try:
    out = [next(data) for _ in range(count)]
    return out, data.stats()
  finally:
    data.close()


def time_variant(spec: str, overrides: list, steps: int) -> dict:
  cfg = config.load(spec, overrides)
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  start = time.perf_counter()
  step = train.compile_steps(cfg, s, train.lower_train_step(cfg, s))
  compile_s = time.perf_counter() - start
  state = train_state.init_state(cfg, s)
  data, stats = batches(cfg, s, steps + 2)
  times = []
  for batch in data:
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  image = data[0]["image"]
  step_s = float(np.median(times[2:]))
  return {"rows": image["patches"].shape[0], "length": image["patches"].shape[1], "compile_s": compile_s,
          "padding": stats.get("data/padding_fraction", 0.0), "resized": stats.get("data/pack_resized", 0.0),
          "images": stats["data/samples"], "step_ms": 1e3 * step_s, "images_per_s": cfg.batch_size / step_s}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/siglip2_naflex_tiny.py:evals=0")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=8, help="timed steps per variant (after 2 warm-up steps)")
  p.add_argument("--budgets", default="16,32", help="the budgets of the compile-count run")
  p.add_argument("--per-row", default="2,4", help="packed rows of k * max_patches tokens, for each k")
  args, rest = p.parse_known_args(argv)
  base = [("batch_size", str(args.batch))] + [tuple(a[len("--config."):].split("=", 1)) for a in rest]
  n = config.load(args.config, base).data.train.max_patches
  plain = time_variant(args.config, base, args.steps)
  variants = {"unpacked": plain}
  for k in (int(v) for v in args.per_row.split(",")):
    packed = base + [("data.train.pack", "true"), ("data.train.pack_length", str(k * n))]
    fewer = int(np.ceil(args.batch * (1 - plain["padding"]) / k * 1.01))  # the tokens used, and 1% to spare
    fewer += (-fewer) % jax.device_count()
    variants[f"packed {k}, equal"] = time_variant(args.config, packed, args.steps)
    variants[f"packed {k}, fewer"] = time_variant(args.config, packed + [("data.train.pack_rows", str(fewer))], args.steps)
  print(f"{jax.devices()[0].device_kind}, {jax.device_count()} device(s); {args.config}, batch {args.batch}, "
        f"max_patches {n}; median of {args.steps} steps")
  print(f"{'variant':<17} {'rows x tokens':>14} {'padding':>8} {'resized':>8} {'step ms':>8} {'images/s':>9} "
        f"{'vs unpacked':>11}")
  for name, r in variants.items():
    print(f"{name:<17} {r['rows']:>6} x {r['length']:<6} {r['padding']:>8.3f} {int(r['resized']):>8} "
          f"{r['step_ms']:>8.1f} {r['images_per_s']:>9.1f} {plain['step_ms'] / r['step_ms']:>10.2f}x")
  cfg = config.load(args.config, base + [("data.train.budgets", args.budgets)])
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  start = time.perf_counter()
  steps = train.compile_steps(cfg, s, train.lower_train_step(cfg, s))
  seconds = time.perf_counter() - start
  data, _ = batches(cfg, s, 8)
  grids = {tuple(g) for b in data for g in np.asarray(b["image"]["shapes"]).tolist()}
  lengths = sorted({b["image"]["patches"].shape[1] for b in data})
  print(f"budgets ({args.budgets}): {len(steps)} compiled steps in {seconds:.1f} s; 8 batches of lengths {lengths} "
        f"held {len(grids)} distinct image grids")


if __name__ == "__main__":
  main()
