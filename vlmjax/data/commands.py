"""`vlmjax data ...`: tools over data sources (synth, inspect, convert)."""

from __future__ import annotations

import itertools
import os
import time

from vlmjax.errors import ConfigError


def _synth(args, overrides) -> int:
  from vlmjax.data import synthetic
  if min(args.num_shards, args.samples_per_shard, args.image_size) <= 0:
    raise ConfigError("--num-shards, --samples-per-shard and --image-size must be positive")
  if args.format == "tfds":
    from vlmjax.data import tfds_shapes
    print(f"prepared tfds:vlmjax_shapes in {tfds_shapes.prepare(args.out, args.tfds_config)}")
    return 0
  paths = synthetic.write_tar_shards(args.out, args.num_shards, args.samples_per_shard,
                                     image_size=args.image_size, seed=args.seed)
  print(f"wrote {len(paths)} shards x {args.samples_per_shard} samples to {args.out}")
  return 0


def raw_records(spec: str, *, data_dir: str | None = None):
  """(records in source order, the source) for a spec; streams read each tar shard once, in order."""
  from vlmjax.data import sources
  src = sources.open_source(spec, mode="scan", image_size=64, data_dir=data_dir)
  return sources.records_of(src), src


def _inspect(args, overrides) -> int:
  import numpy as np
  from vlmjax.data import transforms
  records, src = raw_records(args.spec, data_dir=args.data_dir)
  skips: dict[str, int] = {}
  shown = bad = 0
  start = time.perf_counter()
  for rec in itertools.islice(records, args.num):
    for reason, _ in rec.get("_skips", ()):
      skips[reason] = skips.get(reason, 0) + 1
    if rec.get("image") is None:
      continue
    image = rec["image"]
    try:
      size = "x".join(map(str, transforms.original_size(image)))
    except transforms.BadImage as e:
      bad, size = bad + 1, f"unreadable ({e})"
    caption = rec["caption"]
    kind = f"{len(image)} bytes" if isinstance(image, bytes) else f"array {np.asarray(image).dtype}"
    print(f"{rec['key']:<16} {size:<10} {kind:<14} {caption!r}")
    shown += 1
  elapsed = time.perf_counter() - start
  print(f"-- {src!r}")
  size = f"{len(src)} examples" if hasattr(src, "__len__") else "stream (size unknown)"
  print(f"-- {size}; read {shown} in {elapsed:.2f}s; undecodable {bad}; skipped while reading: "
        + (", ".join(f"{r} {n}" for r, n in sorted(skips.items())) or "none"))
  return 0


def _convert(args, overrides) -> int:
  from vlmjax.data import convert
  if args.format != "arrayrecord":
    raise ConfigError(f"--format {args.format!r} is unknown; valid: arrayrecord")
  if args.per_file <= 0 or (args.workers is not None and args.workers <= 0):
    raise ConfigError("--per-file and --workers must be positive")
  totals = convert.convert(args.spec, args.out, per_file=args.per_file, data_dir=args.data_dir,
                           workers=args.workers or os.cpu_count() or 1)
  print(f"wrote {totals['written']} examples in {totals['files']} ArrayRecord file(s) to {args.out} "
        f"(skipped {totals['skipped']}); read them with arrayrecord:{args.out}/*.array_record")
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
  d.add_argument("--format", choices=("tar", "tfds"), default="tar",
                 help="tfds: prepare the TFDS builder vlmjax_shapes (ArrayRecord) in --out as data_dir")
  d.add_argument("--tfds-config", choices=("default", "tiny"), default="default")
  d.set_defaults(run=_synth)

  d = data_sub.add_parser("inspect", help="print decoded examples and statistics of a data spec")
  d.add_argument("spec", help="e.g. tar:shards/{00000..00009}.tar, arrayrecord:DIR/*.array_record, tfds:NAME:SPLIT")
  d.add_argument("--num", type=int, default=5)
  d.add_argument("--data-dir", default=None, help="TFDS data_dir for tfds: specs")
  d.set_defaults(run=_inspect)

  d = data_sub.add_parser("convert", help="convert a data spec (e.g. tar shards) to ArrayRecord files; "
                         "a rerun resumes an interrupted conversion in --out")
  d.add_argument("spec")
  d.add_argument("--out", required=True)
  d.add_argument("--format", default="arrayrecord")
  d.add_argument("--per-file", type=int, default=10_000, help="examples per ArrayRecord file (at most)")
  d.add_argument("--workers", type=int, default=None,
                 help="worker processes converting tar shards in parallel (default: one per CPU core)")
  d.add_argument("--data-dir", default=None, help="TFDS data_dir for tfds: specs")
  d.set_defaults(run=_convert)
