"""The `vlmjax` command: train | info | data synth.

User errors (bad config, bad override, bad data spec) print one line and exit
with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from vlmjax.config import ConfigError


def _split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
  """`--config.a.b=v` or `--config.a.b v` -> [("a.b", "v")]; anything else is an error."""
  out, i = [], 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      parser.error(f"unrecognized argument {arg!r}; overrides look like --config.a.b=value")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(extra):
        parser.error(f"override {arg!r} has no value; write {arg}=VALUE")
      value, i = extra[i + 1], i + 1
    out.append((key, value))
    i += 1
  return out


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, status 2
    sys.stderr.write(f"{self.prog}: error: {message}\n")
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
  parser = _Parser(prog="vlmjax", description="Vision-language pretraining in JAX.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  p = sub.add_parser("train", help="train (or resume) a config in a workdir")
  p.add_argument("--config", required=True, help="config file, optionally FILE:k=v,...")
  p.add_argument("--workdir", required=True)

  p = sub.add_parser("info", help="parameter counts and training FLOPs of a config, without allocating it")
  p.add_argument("--config", required=True, help="config file, optionally FILE:k=v,...")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

  p = sub.add_parser("data", help="data tools")
  data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
  d = data_sub.add_parser("synth", help="write the synthetic shapes set as img2dataset-style tar shards")
  d.add_argument("--out", required=True)
  d.add_argument("--num-shards", type=int, default=4)
  d.add_argument("--samples-per-shard", type=int, default=1000)
  d.add_argument("--image-size", type=int, default=32)
  d.add_argument("--seed", type=int, default=0)

  args, extra = parser.parse_known_args(argv)
  try:
    if args.command == "train":
      from vlmjax import config, train  # jax imports are slow; keep `--help` fast
      cfg = config.load(args.config, _split_overrides(extra, parser))
      train.train(cfg, args.workdir)
      return 0
    if args.command == "info":
      from vlmjax import config, info
      cfg = config.load(args.config, _split_overrides(extra, parser))
      counts, flops = info.param_counts(cfg), info.train_flops_per_example(cfg)
      if args.json:
        print(json.dumps({"params": counts, "train_flops_per_example": flops}))
      else:
        for name, n in counts.items():
          print(f"{name:<20} {n:>15,}  ({n / 1e6:.2f}M)")
        print(f"{'train GFLOP/example':<20} {flops / 1e9:>15,.2f}  (forward + backward, XLA count)")
      return 0
    if extra:
      parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "data" and args.data_command == "synth":
      from vlmjax.data import synthetic
      if min(args.num_shards, args.samples_per_shard, args.image_size) <= 0:
        parser.error("--num-shards, --samples-per-shard and --image-size must be positive")
      paths = synthetic.write_tar_shards(args.out, args.num_shards, args.samples_per_shard,
                                         image_size=args.image_size, seed=args.seed)
      print(f"wrote {len(paths)} shards x {args.samples_per_shard} samples to {args.out}")
      return 0
  except ConfigError as e:
    sys.stderr.write(f"vlmjax: error: {e}\n")
    return 2
  return 1


if __name__ == "__main__":
  sys.exit(main())
