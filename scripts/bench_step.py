"""Times the jitted train step on random data: throughput, compile time, memory, FLOPs and MFU.

    python scripts/bench_step.py --config configs/openclip_coca_b16.py --batch 256 --steps 20
    python scripts/bench_step.py --config configs/coca_tiny.py --batch 64 --json
    python scripts/bench_step.py --config configs/coca_base.py --batch 8 --compile-only --compare-scan
    python scripts/bench_step.py --config configs/siglip_b16.py --max-batch --config.model.remat=full

Prints examples/s, step time, compile time, peak device memory, model FLOPs per
example (the analytic count `vlmjax info` prints) next to XLA's own count of the
compiled step, and MFU against the device's peak (a table of known devices, or
`--peak-tflops`; H200: the 790 TFLOP/s measured on the lent card, issue 8's basis, not
the datasheet's 989). XLA's count is a rough cross-check: it takes a loop body once (under
`model.scan` it falls short by the stacked layers) and counts cuDNN's fused attention as
nothing. Peak device memory is the process's (state init and autotuning included), so it
errs high against open_clip's, which counts the timed steps. `--compare-scan` compiles the
model with and without layer scan and prints both compile times. `--max-batch` finds the largest batch whose compiled
step fits in device memory (XLA's estimate, 95% of the device's limit or of
`--memory-gib`) and times that. Extra `--config.a.b=v` overrides are applied.
Works on CPU, GPU and TPU.

`--ab KEY=VALUE[;KEY=VALUE...]` (repeatable) also times variants in the same process,
each on top of the base run, and prints a table against it: KEY is a config key
(`model.scan=true`, `model.remat=full`, `loss.caption_chunk=0`) or an XLA compile
option (`xla_gpu_enable_latency_hiding_scheduler=true`), which goes to the
config's `xla_options.<platform>`. This is how an XLA option earns a place in a
config: a measured gain larger than the spread of `--ab base` (the base timed again).
Memory per variant is XLA's compiled estimate
(`compiled_memory_gib`, and its temporaries `temp_memory_gib`: activations, gradients,
workspace); the device's peak counter only ever grows within a process.

    python scripts/bench_step.py --config configs/openclip_coca_b16.py --batch 256 \
        --ab xla_gpu_enable_latency_hiding_scheduler=true --ab model.scan=true

Each row also shows the step time and the model FLOPs per example against the base; a variant
that changes the model's computation counts its own, so patch dropout (FLIP) compares side by side:

    python scripts/bench_step.py --config configs/siglip_tiny.py --batch 64 \
        --ab model.vision.patch_dropout=0.5 --ab model.vision.patch_dropout=0.75

and exact large-batch training in microbatches (GradCache): the temporaries fall with k, the step
time grows by about one forward pass:

    python scripts/bench_step.py --config configs/coca_tiny.py --batch 256 \
        --ab optim.microbatches=2 --ab optim.microbatches=4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vlmjax import cli, config, info, sharding, train, train_state, xla_options  # noqa: E402
from vlmjax.hardware import PEAK_FLOPS, peak_flops  # noqa: E402,F401 (the table lives in the package)

def random_batch(cfg, batch: int, sharding_) -> dict:
  rng = np.random.default_rng(0)
  S, L, V = cfg.model.image_size, cfg.model.text.context_length, cfg.model.text.vocab_size
  text = rng.integers(3, V, size=(batch, L)).astype(np.int32)
  lengths = rng.integers(L // 4, L, size=batch)
  text[:, 0] = 1
  for i, n in enumerate(lengths):  # a caption of n tokens, EOS, then padding
    text[i, n] = 2
    text[i, n + 1:] = 0
  image = rng.standard_normal(size=(batch, S, S, 3), dtype=np.float32)
  return jax.device_put({"image": image, "text": text}, sharding_)


def peak_memory_bytes() -> int | None:
  stats = [d.memory_stats() for d in jax.local_devices()]
  if not all(stats):
    return None  # CPU: not tracked
  return max(s.get("peak_bytes_in_use", 0) for s in stats)


def compile_abstract(cfg):
  """(the train step compiled for abstract state and batch, seconds): nothing allocated."""
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  t = time.perf_counter()
  compiled = train.lower_train_step(cfg, s).compile()  # the lowering `vlmjax train` compiles
  return compiled, time.perf_counter() - t


def compile_seconds(cfg) -> float:
  return compile_abstract(cfg)[1]


def compiled_bytes(compiled) -> int:
  """XLA's estimate of the device memory one step needs: state and batch, outputs not aliased to
  them, and the temporaries (allocated as one block). `peak_memory_in_bytes` where larger: on CPU
  it holds about the arguments alone, so it never stands in for the sum."""
  m = compiled.memory_analysis()
  total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return int(max(total, getattr(m, "peak_memory_in_bytes", 0) or 0))


def temp_bytes(compiled) -> int:
  """XLA's temporaries of one step (activations, gradients, workspace): what `optim.microbatches`
  and remat shrink, without the state and batch that every variant holds alike."""
  return int(compiled.memory_analysis().temp_size_in_bytes)


def fused_attention_calls(compiled) -> int:
  """cuDNN fused-attention custom calls in the compiled step (0 off GPU, or where XLA's is used)."""
  try:
    return fused_calls(compiled.as_text())
  except Exception:  # noqa: BLE001 -- a backend without HLO text
    return 0


def fused_calls(hlo_text: str) -> int:
  return sum(1 for line in hlo_text.splitlines() if "custom-call" in line and "__cudnn$fmha" in line)


def device_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats()
  return stats.get("bytes_limit") if stats else None


def largest_batch(spec: str, overrides: list, limit: int, multiple: int, log=print) -> tuple[int, dict, Any]:
  """The largest global batch (a multiple of `multiple`) whose compiled step fits in `limit` bytes
  per device: memory is affine in the batch, so two abstract compiles give the line, a third
  checks the prediction (stepping down while it does not fit). Nothing is allocated. Returns the
  batch, the probes, and that batch's compiled step (to time without compiling it again)."""
  probes: dict[int, int] = {}
  executables: dict[int, Any] = {}
  seconds: dict[int, float] = {}

  def probe(b: int) -> int:
    if b not in probes:
      compiled, secs = compile_abstract(config.load(spec, overrides + [("batch_size", str(b))]))
      probes[b], seconds[b] = compiled_bytes(compiled), secs
      executables.clear()  # keep only the latest: the answer is the last batch probed
      executables[b] = compiled
      log(f"  batch {b}: {probes[b] / 2**30:.2f} GiB (compiled in {secs:.0f} s)")
    return probes[b]
  lo, hi = 4 * multiple, 8 * multiple
  slope = max((probe(hi) - probe(lo)) / (hi - lo), 1.0)
  fixed = probes[lo] - slope * lo
  b = max(multiple, int((limit - fixed) / slope) // multiple * multiple)
  for _ in range(6):
    if probe(b) <= limit or b == multiple:
      break
    b = max(multiple, b - max(1, int((probes[b] - limit) / slope) // multiple + 1) * multiple)
  if probe(b) > limit:
    raise SystemExit(f"--max-batch: no batch fits in {limit / 2**30:.2f} GiB (batch {b} needs "
                     f"{probes[b] / 2**30:.2f} GiB; probes {sorted(probes)})")
  return b, {"limit_gib": limit / 2**30, "bytes_per_example": slope, "fixed_gib": fixed / 2**30,
             "probes_gib": {k: v / 2**30 for k, v in probes.items()}, "compile_s": seconds[b]}, executables.get(b)


def bench(cfg, steps: int, warmup: int, peak: float | None, *, model_flops: float | None = None,
          compiled=None, compile_s: float | None = None) -> dict:
  """Times the step of `cfg` (compiled here, or the given `compiled` for the same config)."""
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  state = train_state.init_state(cfg, s)
  batch = random_batch(cfg, cfg.batch_size, s.batch_sharding)
  if compiled is None:
    t = time.perf_counter()
    compiled = train.compile_train_step(cfg, s).lower(state, batch).compile()
    compile_s = time.perf_counter() - t
  for _ in range(warmup):
    state, m = compiled(state, batch)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t) / steps
  if model_flops is None:
    model_flops = info.train_flops_per_example(cfg)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # the partitioned program's count is one device's share: times the devices, over the global batch
  xla_flops = float(cost.get("flops", 0.0)) * jax.device_count() / cfg.batch_size if cost else 0.0
  kind = jax.devices()[0].device_kind
  peak = peak or peak_flops(kind)
  n = jax.device_count()
  out = {
      "device": f"{n} x {kind}", "batch": cfg.batch_size, "examples_per_sec": cfg.batch_size / step_s,
      "step_ms": 1e3 * step_s, "compile_s": compile_s, "peak_memory_gib": None,
      "model_gflop_per_example": model_flops / 1e9, "xla_gflop_per_example": xla_flops / 1e9,
      "mfu": (model_flops * cfg.batch_size / step_s / (peak * n)) if peak else None,
      "peak_tflops_per_device": peak / 1e12 if peak else None,
      "loss": float(m["loss"]),
      "compiled_memory_gib": compiled_bytes(compiled) / 2**30 if compiled.memory_analysis() else None,
      "temp_memory_gib": temp_bytes(compiled) / 2**30 if compiled.memory_analysis() else None,
      "fused_attention_calls": fused_attention_calls(compiled),
      "xla_options": xla_options.for_backend(cfg),
  }
  del state, compiled
  mem = peak_memory_bytes()
  if mem is not None:
    out["peak_memory_gib"] = mem / 2**30
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--batch", type=int, help="global batch (default: the config's)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--peak-tflops", type=float, help="peak of one device; default from the known-device table")
  p.add_argument("--json", action="store_true")
  p.add_argument("--compile-only", action="store_true", help="only time compilation")
  p.add_argument("--compare-scan", action="store_true", help="compile with and without layer scan")
  p.add_argument("--max-batch", action="store_true",
                 help="find the largest batch that fits (from XLA's memory estimates) and time it")
  p.add_argument("--memory-gib", type=float, help="device memory for --max-batch (default: the device's limit)")
  p.add_argument("--ab", action="append", default=[], metavar="KEY=VALUE[;KEY=VALUE]",
                 help="also time this variant: config keys or xla_* compile options (repeatable)")
  args, extra = p.parse_known_args(argv)
  overrides = cli.split_overrides(extra)
  compiled = None
  if args.max_batch:
    limit = args.memory_gib * 2**30 if args.memory_gib else device_memory_bytes()
    if not limit:
      raise SystemExit("--max-batch needs --memory-gib on a device that does not report its memory (CPU)")
    shards = max(1, jax.device_count())
    batch, found, compiled = largest_batch(args.config, overrides, int(0.95 * limit), 32 * shards,
                                           log=lambda m: print(m, file=sys.stderr, flush=True))
    overrides.append(("batch_size", str(batch)))
  elif args.batch:
    overrides.append(("batch_size", str(args.batch)))
  cfg = config.load(args.config, overrides)
  result: dict = {"config": args.config}
  if args.max_batch:
    result["max_batch"] = found
  if args.compare_scan:
    for scan in (True, False):
      c = config.load(args.config, overrides + [("model.scan", str(scan))])
      result[f"compile_s_scan_{str(scan).lower()}"] = compile_seconds(c)
  if args.compile_only:
    result.setdefault("compile_s", compile_seconds(cfg))
  else:
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    model_flops = info.train_flops_per_example(cfg)  # variants that change the model count their own
    result.update(bench(cfg, args.steps, args.warmup, peak, model_flops=model_flops, compiled=compiled,
                        compile_s=found["compile_s"] if compiled is not None else None))
    if args.ab:
      print_variant_row("(base)", result, result, header=True)
      result["variants"] = {}
      for v in args.ab:  # each row as it comes (stderr), so a timeout keeps the finished ones
        r = result["variants"][v] = run_variant(args.config, overrides, v, args.steps, args.warmup, peak,
                                                model_flops)
        print_variant_row(v, r, result)
  if args.json:
    print(json.dumps(result))
    return 0
  for k, v in result.items():
    if k != "variants":
      print(f"{k:<24} {v:,.3f}" if isinstance(v, float) else f"{k:<24} {v}")
  if args.ab:
    print_variants(result)
  return 0


def variant_overrides(cfg_overrides: list, base_cfg, variant: str) -> list:
  """Config overrides for one `--ab` variant: config keys as they are, xla_* options appended to
  the config's options for this platform."""
  out, xla = list(cfg_overrides), []
  for item in filter(None, (i.strip() for i in variant.split(";"))):
    if item == "base":  # the base again: its spread is the noise floor of the comparison
      continue
    key, eq, value = item.partition("=")
    if not eq:
      raise config.ConfigError(f"--ab {variant!r}: {item!r} is not KEY=VALUE")
    (xla if key.strip().removeprefix("--").startswith("xla_") else out).append((key.strip(), value.strip()))
  if xla:
    platform = jax.default_backend()
    current = base_cfg.xla_options[platform]
    text = ",".join(filter(None, [current] + [f"{k.removeprefix('--')}={v}" for k, v in xla]))
    out.append((f"xla_options.{platform}", text))
  return out


def run_variant(spec: str, overrides: list, variant: str, steps: int, warmup: int, peak, model_flops) -> dict:
  """Times one `--ab` variant. Its model FLOPs are the base's (`model_flops`) unless it changes the
  model's computation (`model.vision.patch_dropout=0.75`, say), when they are counted again."""
  try:
    base_cfg = config.load(spec, overrides)
    cfg = config.load(spec, variant_overrides(overrides, base_cfg, variant))
    if counted(cfg.model) != counted(base_cfg.model):
      model_flops = info.train_flops_per_example(cfg)
    return bench(cfg, steps, warmup, peak, model_flops=model_flops)
  except Exception as e:  # noqa: BLE001 -- one failing variant (an option this XLA lacks, OOM) is reported, not fatal
    return {"error": config.one_line(e)}


def counted(model_cfg) -> dict:
  """The model settings the FLOPs count depends on (the count is taken without remat, XLA attention)."""
  return {k: v for k, v in model_cfg.to_dict().items() if k not in ("remat", "attention", "scan")}


def print_variant_row(name: str, r: dict, base: dict, *, header: bool = False, file=sys.stderr) -> None:
  """One row of the `--ab` table against `base` (the base run's result): throughput, step time,
  model FLOPs per example (both relative to the base), compile time, compiled memory and its
  temporaries."""
  if header:
    print(f"{'variant':<48} {'ex/s':>9} {'vs base':>8} {'step ms':>9} {'GFLOP/ex':>9} {'vs base':>8} "
          f"{'compile s':>9} {'mem GiB':>8} {'temp GiB':>8}", file=file)
  if "error" in r:
    print(f"{name:<48} failed: {r['error']}", file=file, flush=True)
    return
  mem = f"{r['compiled_memory_gib']:.2f}" if r.get("compiled_memory_gib") is not None else "-"
  temp = f"{r['temp_memory_gib']:.3f}" if r.get("temp_memory_gib") is not None else "-"
  gflop, base_gflop = r["model_gflop_per_example"], base["model_gflop_per_example"]
  print(f"{name:<48} {r['examples_per_sec']:>9.1f} {r['examples_per_sec'] / base['examples_per_sec'] - 1:>+8.1%} "
        f"{r['step_ms']:>9.1f} {gflop:>9.3f} {gflop / base_gflop - 1:>+8.1%} {r['compile_s']:>9.1f} {mem:>8} {temp:>8}",
        file=file, flush=True)


def print_variants(result: dict) -> None:
  print()
  print_variant_row("(base)", result, result, header=True, file=sys.stdout)
  for name, r in result["variants"].items():
    print_variant_row(name, r, result, file=sys.stdout)


if __name__ == "__main__":
  sys.exit(main())
