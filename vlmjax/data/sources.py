"""Data sources named by spec strings: the one parser, the registry of kinds, `open_source`.

  synthetic:shapes[:SPLIT]          the procedural shapes set (random access)
  synthetic:shapes_multi[:SPLIT]    its multi-object variant, with regions (`synthetic`)
  synthetic:shapes_wide[:SPLIT]     its mixed-aspect-ratio variant, for NaFlex batches (`synthetic`)
  tar:PATTERN                       img2dataset tar shards: a local path, glob or brace range
                                    (`shards/{00000..00127}.tar`) or a URL (http(s)://, gs://, s3://)
  arrayrecord:PATTERN               ArrayRecord files of serialised examples (random access)
  tfds:NAME[/CONFIG][:SPLIT]        a TFDS dataset prepared as ArrayRecord, read without TensorFlow
  wds:ROOT[:SPLIT]                  a CLIP_benchmark webdataset set, downloaded (ROOT/SPLIT/*.tar,
                                    ROOT/classnames.txt; SPLIT defaults to test): `bench_sources`
  folder:ROOT                       ImageNet-style class folders ROOT/<class>/*.jpg (random access)

Every record is {"key", "image" (encoded bytes or uint8 [H, W, 3]), "caption"} (plus "label"
for classification sets, where "caption" may be None, and "captions" for images with several
references: "caption" is then the first of them, and training draws one of "captions" per visit),
and "regions" where a source has boxes with texts (`regions`: the contract and the bad-regions marker).

`open_source(spec, mode=...)` is the only place a spec is parsed:
  random   a random-access source (`__len__`, `__getitem__`): evaluation sets; remote tar
           shards cannot be indexed and are refused in one line
  scan     every record once, in order (an iterable; `records_of` iterates either kind):
           `vlmjax data inspect | convert`
  stream   this host's records for training, shuffled, repeating forever (a grain
           IterDataset): tar shards as a `TarStream` of this host's shards and a window
           shuffle; random-access kinds as a fresh permutation per epoch, every
           `host_count`-th index for this host
`class_names(spec)` gives a labelled set's class names in label order (its metadata, read
without loading the data); `templates(spec)` the zero-shot prompt templates a set ships with
(`{}` where the class name goes), or None; split sizes are `len(open_source(spec))`.

A new kind is one opener and one registry line: `SOURCES.register("mine", Kind("mine:ARGS",
open_mine))` where `open_mine(rest, opts: Open)` returns a random-access source (streaming
and scanning come for free) or, for a streamed kind, an iterable / grain IterDataset per mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import grain

from vlmjax.data import synthetic
from vlmjax.data.shards import expand_pattern, is_url
from vlmjax.data.shuffle import EpochShuffle, derive_seed
from vlmjax.errors import DataError
from vlmjax.registry import Registry

MODES = ("random", "scan", "stream")


@dataclasses.dataclass(frozen=True)
class Open:
  """How a source is opened: the whole spec (for messages), the mode, and the options its kind may use."""
  spec: str
  mode: str = "random"
  image_size: int = 64              # what the synthetic set renders at
  data_dir: str | None = None       # TFDS data_dir
  seed: int = 0                     # stream: this source's seed
  host_index: int = 0               # stream: this host, of host_count
  host_count: int = 1
  shuffle_buffer: int = 0           # stream: window shuffle of streamed kinds
  num_threads: int = 1              # stream: read threads of random-access kinds


@dataclasses.dataclass(frozen=True)
class Kind:
  """A kind of source: its spec syntax (for messages), the opener, and optionally its class names and
  prompt templates (functions of the spec after `kind:` and the data_dir)."""
  usage: str
  open: Callable[[str, Open], Any]
  class_names: Callable[[str, str | None], tuple[str, ...] | None] | None = None
  templates: Callable[[str, str | None], tuple[str, ...] | None] | None = None


def open_source(spec: str, *, mode: str = "random", image_size: int = 64, data_dir: str | None = None,
                seed: int = 0, host_index: int = 0, host_count: int = 1, shuffle_buffer: int = 0,
                num_threads: int = 1):
  """Parses `spec` and opens it in `mode` (see the module docstring); a one-line DataError otherwise."""
  if mode not in MODES:
    raise ValueError(f"open_source mode must be one of {'|'.join(MODES)}, got {mode!r}")
  kind, rest = _parse(spec)
  opts = Open(spec, mode, image_size, data_dir, seed, host_index, host_count, shuffle_buffer, num_threads)
  src = kind.open(rest, opts)
  random_access = hasattr(src, "__getitem__")
  if mode == "random" and not random_access:
    raise DataError(f"{spec!r} is a stream; evaluators need a random-access source (local tar shards, "
                    "arrayrecord, tfds, wds, folder, synthetic)")
  if mode == "stream" and random_access:
    ds = EpochShuffle(grain.MapDataset.source(src), seed=seed)[host_index::host_count]  # this host's share
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                prefetch_buffer_size=4 * max(1, num_threads)))
  return src


def records_of(src):
  """The records of a source opened with mode="scan", in order."""
  return (src[i] for i in range(len(src))) if hasattr(src, "__getitem__") else iter(src)


def class_names(spec: str, *, data_dir: str | None = None) -> tuple[str, ...] | None:
  """The class names of a labelled source in label order; None when its kind names none."""
  kind, rest = _parse(spec)
  return kind.class_names(rest, data_dir) if kind.class_names else None


def templates(spec: str, *, data_dir: str | None = None) -> tuple[str, ...] | None:
  """The zero-shot prompt templates a source ships with, each with one `{}` where the class name goes
  (`template.format(name)`); None when its kind or this set has none."""
  kind, rest = _parse(spec)
  return kind.templates(rest, data_dir) if kind.templates else None


def _parse(spec: str) -> tuple[Kind, str]:
  name, _, rest = spec.partition(":")
  if name not in SOURCES:
    raise DataError(f"unknown data source {spec!r}; valid kinds: {', '.join(k.usage for k in SOURCES.values())}")
  return SOURCES[name], rest


# --- the kinds ----------------------------------------------------------------------------------

SYNTHETIC = {"shapes": synthetic.ShapesSource, "shapes_multi": synthetic.ShapesMultiSource,
             "shapes_wide": synthetic.ShapesWideSource}


def _synthetic_split(rest: str, spec: str) -> tuple[str, str]:
  name, _, split = rest.partition(":")
  if name not in SYNTHETIC:
    raise DataError(f"unknown synthetic set {name!r} in {spec!r}; valid: "
                    f"synthetic:{'|'.join(SYNTHETIC)}[:train|validation|test]")
  if (split or "train") not in synthetic.SEED_OF_SPLIT:
    raise DataError(f"unknown split {split!r} in {spec!r}; valid: {', '.join(synthetic.SEED_OF_SPLIT)}")
  return name, split or "train"


def _open_synthetic(rest: str, opts: Open):
  name, split = _synthetic_split(rest, opts.spec)
  if name == "shapes_multi" and opts.image_size < synthetic.MULTI_MIN_SIZE:
    raise DataError(f"{opts.spec!r} renders at image_size >= {synthetic.MULTI_MIN_SIZE}, got {opts.image_size}; "
                    f"set the model's (or evaluator's) image size to {synthetic.MULTI_MIN_SIZE} or more")
  return SYNTHETIC[name](split, image_size=opts.image_size)


def _synthetic_class_names(rest: str, data_dir: str | None) -> tuple[str, ...]:
  _synthetic_split(rest, f"synthetic:{rest}")
  return synthetic.CLASS_NAMES


def _paths(rest: str, opts: Open) -> list[str]:
  if not rest:
    raise DataError(f"data spec {opts.spec!r} names no path; expected {opts.spec.partition(':')[0]}:PATTERN")
  return expand_pattern(rest)


def _open_tar(rest: str, opts: Open):
  paths = _paths(rest, opts)
  from vlmjax.data import tar_stream  # noqa: PLC0415 (grain's iterator machinery; only for streams)
  if opts.mode == "stream":
    ds = tar_stream.TarStream(paths, seed=opts.seed, host_index=opts.host_index, host_count=opts.host_count)
    if opts.shuffle_buffer > 1:
      ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=opts.shuffle_buffer,
                                                       seed=derive_seed(opts.seed, 1))
    return ds
  if opts.mode == "scan" or any(is_url(p) for p in paths):  # URLs are streamed, never indexed or downloaded
    return tar_stream.TarStream(paths, seed=0, shuffle_shards=False, repeat=False)
  from vlmjax.data.tar_source import TarSource  # noqa: PLC0415
  return TarSource(rest)


def _open_arrayrecord(rest: str, opts: Open):
  from vlmjax.data import records  # noqa: PLC0415
  return records.ArrayRecordSource(_paths(rest, opts))


def _tfds_name(rest: str, spec: str) -> tuple[str, str]:
  name, _, split = rest.partition(":")
  if not name:
    raise DataError(f"data spec {spec!r} names no dataset; expected tfds:NAME[/CONFIG][:SPLIT]")
  return name, split or "train"


def _open_tfds(rest: str, opts: Open):
  from vlmjax.data import records  # noqa: PLC0415
  return records.TfdsSource(*_tfds_name(rest, opts.spec), data_dir=opts.data_dir)


def _tfds_class_names(rest: str, data_dir: str | None) -> tuple[str, ...] | None:
  """The `label` feature's names from the prepared set's metadata (downloads nothing); `_` -> space."""
  names = _tfds_label_names(_tfds_name(rest, f"tfds:{rest}")[0], data_dir)
  return None if names is None else tuple(n.replace("_", " ") for n in names)


def _tfds_label_names(name: str, data_dir: str | None) -> list[str] | None:
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (optional, heavy)
  except ImportError:
    raise DataError(f"tensorflow_datasets is not installed; cannot read class names of {name!r}") from None
  info = tfds.builder(name, data_dir=data_dir or None).info
  label = info.features["label"] if "label" in info.features else None
  return list(label.names) if label is not None and hasattr(label, "names") else None


def _bench(name: str) -> Callable:
  """A function of `bench_sources` (imported when first used) taking the spec's rest."""
  def call(rest: str, _opts_or_data_dir):
    from vlmjax.data import bench_sources  # noqa: PLC0415
    return getattr(bench_sources, name)(rest)
  return call


SOURCES = Registry("data source kind", {
    "synthetic": Kind("synthetic:shapes|shapes_multi|shapes_wide[:SPLIT]", _open_synthetic, _synthetic_class_names),
    "tar": Kind("tar:PATTERN", _open_tar),
    "arrayrecord": Kind("arrayrecord:PATTERN", _open_arrayrecord),
    "tfds": Kind("tfds:NAME[/CONFIG][:SPLIT]", _open_tfds, _tfds_class_names),
    "wds": Kind("wds:ROOT[:SPLIT]", _bench("open_wds"), _bench("wds_class_names"), _bench("wds_templates")),
    "folder": Kind("folder:ROOT", _bench("open_folder"), _bench("folder_class_names")),
})
