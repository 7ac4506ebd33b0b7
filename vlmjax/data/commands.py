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
  from vlmjax import progress
  bar = progress.Counter(f"writing {args.out}", total=args.num_shards * args.samples_per_shard, unit="examples")
  if args.set == "shapes_multi" and args.image_size < synthetic.MULTI_MIN_SIZE:
    raise ConfigError(f"--set shapes_multi needs --image-size >= {synthetic.MULTI_MIN_SIZE}, got {args.image_size}")
  paths = synthetic.write_tar_shards(args.out, args.num_shards, args.samples_per_shard, image_size=args.image_size,
                                     seed=args.seed, kind=args.set, on_example=bar.update)
  bar.close()
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
  from vlmjax import progress
  bar = progress.stderr_counter("reading", total=args.num, unit="examples")  # stdout holds the examples
  for rec in itertools.islice(records, args.num):
    bar.update()
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
    boxes = f" ({len(rec['regions'])} regions)" if rec.get("regions") is not None else \
        f" (bad regions: {rec['_bad_regions']})" if rec.get("_bad_regions") else ""
    print(f"{rec['key']:<16} {size:<10} {kind:<14} {caption!r}{boxes}")
    shown += 1
  bar.close()
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


SPEC_HELP = ("a data spec: tar:shards/{00000..00009}.tar, arrayrecord:DIR/*.array_record, "
             "tfds:NAME[/CONFIG][:SPLIT], synthetic:shapes[:SPLIT] (README.md, data sources)")
DATA_DIR_HELP = "TFDS data_dir for tfds: specs (default: TFDS's own, ~/tensorflow_datasets)"

SYNTH_EPILOG = """\
examples:
  vlmjax data synth --out data/shapes          # data/shapes/00000.tar ... 00003.tar, 1000 each
  vlmjax train --config configs/coca_tiny.py --workdir runs/demo \\
      --config.data.train.source='tar:data/shapes/{00000..00003}.tar'
  vlmjax data synth --out data/tfds --format tfds --tfds-config tiny
      # then tfds:vlmjax_shapes/tiny:train with --config.data.train.data_dir=data/tfds"""

INSPECT_EPILOG = """\
examples:
  vlmjax data inspect 'tar:data/shapes/{00000..00003}.tar' --num 5
  vlmjax data inspect synthetic:shapes:validation
  vlmjax data inspect tfds:vlmjax_shapes/tiny:train --data-dir data/tfds"""

CONVERT_EPILOG = """\
examples:
  vlmjax data convert 'tar:data/shapes/{00000..00003}.tar' --out data/shapes_ar
  vlmjax data convert 'tar:/data/cc3m/*.tar' --out /data/cc3m_ar --workers 16
  vlmjax train --config configs/coca_tiny.py --workdir runs/ar \\
      --config.data.train.source='arrayrecord:data/shapes_ar/*.array_record'"""


def add_parsers(sub) -> None:
  p = sub.add_parser("data", help="data tools: synth, inspect, convert",
                     description="Tools over data sources: write the synthetic shapes set, look at a source, "
                     "convert one\nto ArrayRecord. `vlmjax data COMMAND --help` for each.",
                     epilog="examples:\n  vlmjax data synth --out data/shapes\n"
                     "  vlmjax data inspect 'tar:data/shapes/{00000..00003}.tar'\n"
                     "  vlmjax data convert 'tar:data/shapes/{00000..00003}.tar' --out data/shapes_ar")
  data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=type(p), metavar="COMMAND")
  d = data_sub.add_parser("synth", help="write the synthetic shapes set as img2dataset-style tar shards",
                          description="Writes the synthetic shapes set (a coloured shape on a background, "
                          "captioned with its\ncolour, shape and position) as tar shards OUT/00000.tar, ... "
                          "of KEY.jpg, KEY.txt, KEY.json;\nor, with --format tfds, prepares it as a TFDS "
                          "builder in ArrayRecord format.", epilog=SYNTH_EPILOG)
  d.add_argument("--out", required=True, metavar="DIR", help="directory for the shards (tfds: the data_dir)")
  d.add_argument("--num-shards", type=int, default=4, metavar="N", help="tar shards to write")
  d.add_argument("--samples-per-shard", type=int, default=1000, metavar="M", help="examples in each shard")
  d.add_argument("--image-size", type=int, default=32, metavar="S", help="image side in pixels")
  d.add_argument("--seed", type=int, default=0, help="seed of the examples; the same seed writes the same set")
  d.add_argument("--set", choices=("shapes", "shapes_multi"), default="shapes",
                 help="shapes: one object per image; shapes_multi: 2 to 4, with their regions (boxes and "
                 "texts) in each KEY.json (--image-size >= 32)")
  d.add_argument("--format", choices=("tar", "tfds"), default="tar",
                 help="tar: shards; tfds: prepare the TFDS builder vlmjax_shapes (ArrayRecord) with --out as its "
                 "data_dir (sizes from --tfds-config; --num-shards, --samples-per-shard, --image-size, --seed and "
                 "--set do not apply)")
  d.add_argument("--tfds-config", choices=("default", "tiny", "multi"), default="default",
                 help="with --format tfds: default: 10k/1k/1k train/validation/test examples at 64 px; "
                 "tiny: 64/16/16 at 32 px; multi: shapes_multi with regions, 64/16/16 at 32 px")
  d.set_defaults(run=_synth)

  d = data_sub.add_parser("inspect", help="print decoded examples and statistics of a data spec",
                          description="Reads the first --num examples of a data spec in order and prints each "
                          "one's key,\nimage size, encoding and caption; then the source's size, the read rate, "
                          "undecodable\nimages and the examples skipped while reading.", epilog=INSPECT_EPILOG)
  d.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
  d.add_argument("--num", type=int, default=5, metavar="N", help="examples to print")
  d.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
  d.set_defaults(run=_inspect)

  d = data_sub.add_parser("convert", help="convert a data spec (e.g. tar shards) to ArrayRecord files; "
                          "a rerun resumes an interrupted conversion in --out",
                          description="Converts a data spec to ArrayRecord files (random access: exact data "
                          "positions in\ncheckpoints, global shuffling), tar shards in parallel. Run again with "
                          "the same\narguments, it resumes an interrupted conversion in --out.",
                          epilog=CONVERT_EPILOG)
  d.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
  d.add_argument("--out", required=True, metavar="DIR",
                 help="directory for the files; train on them with arrayrecord:DIR/*.array_record")
  d.add_argument("--format", default="arrayrecord", help="output format (only arrayrecord so far)")
  d.add_argument("--per-file", type=int, default=10_000, metavar="N", help="examples per ArrayRecord file (at most)")
  d.add_argument("--workers", type=int, default=None, metavar="N",
                 help="worker processes converting tar shards in parallel (default: one per CPU core)")
  d.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
  d.set_defaults(run=_convert)
