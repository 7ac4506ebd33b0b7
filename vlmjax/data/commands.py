"""`vlmjax data ...`: tools over data sources (synth)."""

from __future__ import annotations

from vlmjax.config import ConfigError


def _synth(args, overrides) -> int:
  from vlmjax.data import synthetic
  if min(args.num_shards, args.samples_per_shard, args.image_size) <= 0:
    raise ConfigError("--num-shards, --samples-per-shard and --image-size must be positive")
  paths = synthetic.write_tar_shards(args.out, args.num_shards, args.samples_per_shard,
                                     image_size=args.image_size, seed=args.seed)
  print(f"wrote {len(paths)} shards x {args.samples_per_shard} samples to {args.out}")
  return 0


def add_parsers(sub) -> None:
  p = sub.add_parser("data", help="data tools")
  data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p))
  d = data_sub.add_parser("synth", help="write the synthetic shapes set as img2dataset-style tar shards")
  d.add_argument("--out", required=True)
  d.add_argument("--num-shards", type=int, default=4)
  d.add_argument("--samples-per-shard", type=int, default=1000)
  d.add_argument("--image-size", type=int, default=32)
  d.add_argument("--seed", type=int, default=0)
  d.set_defaults(run=_synth)
