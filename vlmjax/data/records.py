"""ArrayRecord files and TFDS datasets: random-access sources of serialised examples.

A record is a `tf.train.Example` (the proto TFDS writes, from TFDS's own copy, so
no TensorFlow) with bytes features `image` (encoded), `caption` (UTF-8) and `key`:
exactly what TFDS stores for Image + Text features, so the ArrayRecord files of a
prepared TFDS dataset are also readable with `arrayrecord:PATTERN`. A `caption`
feature with several values is an image with several references (evaluation
sets): the record gets `captions` (all of them) and `caption` (the first). Regions are TFDS's
layout of a `Sequence({"bbox": BBoxFeature(), "text": Text()})` feature named `regions`: float
`regions/bbox` (ymin, xmin, ymax, xmax per box, float32) and bytes `regions/text`; both are
written and read (ArrayRecord and TFDS alike) as `vlmjax.data.regions` describes, so a record
read back has `regions` [{"box": [x0, y0, x1, y1], "text"}] or the bad-regions marker.
"""

from __future__ import annotations

import bisect
import os

import grain
import numpy as np

from vlmjax.data import regions as regions_lib
from vlmjax.errors import DataError

CAPTION_FEATURES = ("caption", "text")


def serialize(key: str, image: bytes, caption: str | list[str], regions: list[dict] | None = None) -> bytes:
  """A tf.train.Example of one record; `regions` (checked, see `vlmjax.data.regions`) in TFDS's layout."""
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2
  captions = [caption] if isinstance(caption, str) else list(caption)
  feats = {name: tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=values))
           for name, values in (("key", [key.encode()]), ("image", [image]),
                                ("caption", [c.encode() for c in captions]))}
  if regions is not None:
    boxes, texts = regions_lib.to_tfds(regions)
    feats["regions/bbox"] = tf_feature_pb2.Feature(float_list=tf_feature_pb2.FloatList(value=boxes))
    feats["regions/text"] = tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=texts))
  return tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=feats)).SerializeToString()


def parse(data: bytes, shard: str) -> dict:
  """Serialised example -> raw record; an unreadable one becomes a skip marker."""
  from google.protobuf.message import DecodeError
  from tensorflow_datasets.proto import tf_example_pb2
  try:
    feats = tf_example_pb2.Example.FromString(data).features.feature
  except DecodeError:
    return {"key": "", "_skips": [("bad_record", shard)]}
  values = lambda name: list(feats[name].bytes_list.value) if name in feats else []
  value = lambda name: values(name)[0] if values(name) else None
  captions = next((values(n) for n in CAPTION_FEATURES if values(n)), [None])
  key = (value("key") or b"").decode("utf-8", "replace")
  extra = {"captions": captions} if len(captions) > 1 else {}
  if "regions/bbox" in feats or "regions/text" in feats:
    extra.update(regions_lib.from_tfds(feats["regions/bbox"].float_list.value, values("regions/text"),
                                       f"record {key!r} in {shard}"))
  return record(key, value("image"), captions[0], shard, **extra)


def record(key: str, image, caption: bytes | str | None, shard: str, **extra) -> dict:
  """A raw record with str caption(s), or a skip marker when a caption is not UTF-8."""
  try:
    caption = caption.decode("utf-8") if isinstance(caption, bytes) else caption
    if "captions" in extra:
      extra["captions"] = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in extra["captions"]]
  except UnicodeDecodeError:
    return {"key": key, "_skips": [("bad_text", shard)]}
  return {"key": key, "image": image, "caption": caption, "_shard": shard, **extra}


class ArrayRecordSource:
  """Random access over ArrayRecord files (grain's ArrayRecordDataSource) holding serialised examples."""

  def __init__(self, paths: list[str]):
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise DataError(f"ArrayRecord file {missing[0]!r} does not exist ({len(missing)} of {len(paths)} missing)")
    self.paths = paths
    self._starts = []  # first global index of every file, for naming the shard of a bad record
    total = 0
    for p in paths:
      self._starts.append(total)
      total += _num_records(p)
    try:
      self._source = grain.sources.ArrayRecordDataSource(paths)
    except Exception as e:  # noqa: BLE001 -- array_record raises bare RuntimeErrors
      raise DataError(f"the {len(paths)} ArrayRecord file(s) {paths[0]!r}, ... are unreadable "
                      f"({type(e).__name__}: {_first_line(e)})") from None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    shard = self.paths[bisect.bisect_right(self._starts, i) - 1]
    try:
      data = self._source[i]
    except Exception:  # noqa: BLE001 -- a corrupt chunk: array_record raises bare RuntimeErrors
      return {"key": "", "_skips": [("bad_record", shard)]}
    return parse(data, shard)

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} files, {len(self)} examples)"


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or ["no message"])[0][:200]


def _num_records(path: str) -> int:
  """The number of records of an ArrayRecord file; a one-line DataError naming a corrupt or foreign file."""
  from array_record.python import array_record_module
  try:
    reader = array_record_module.ArrayRecordReader(path)
    try:
      return reader.num_records()
    finally:
      reader.close()
  except Exception as e:  # noqa: BLE001 -- array_record raises bare RuntimeErrors
    raise DataError(f"ArrayRecord file {path!r} is corrupt or not an ArrayRecord file "
                    f"({type(e).__name__}: {_first_line(e)})") from None


def write_arrayrecord(records, out_dir: str, *, name: str = "data", per_file: int = 10_000) -> list[str]:
  """Writes raw records {"key", "image" (bytes), "caption", optional "captions", optional "regions"
  (checked)} as `NAME-00000-of-NNNNN.array_record` files; `caption` is stored first, then the other
  `captions`."""
  from array_record.python import array_record_module
  os.makedirs(out_dir, exist_ok=True)
  tmp_paths, writer, n = [], None, 0
  try:
    for rec in records:
      if n % per_file == 0:
        if writer is not None:
          writer.close()
        tmp_paths.append(os.path.join(out_dir, f".{name}-{len(tmp_paths):05d}.tmp"))
        writer = array_record_module.ArrayRecordWriter(tmp_paths[-1], "group_size:1")
      first = rec.get("caption")
      captions = ([first] if first else []) + [c for c in rec.get("captions") or () if c and c != first]
      if not captions:
        raise DataError(f"record {rec['key']!r}: no caption to write (`caption` and `captions` are empty)")
      writer.write(serialize(rec["key"], rec["image"], captions if len(captions) > 1 else captions[0],
                             rec.get("regions")))
      n += 1
  except BaseException:  # a bad record or Ctrl-C: no partial files left behind
    if writer is not None:
      writer.close()
    for tmp in tmp_paths:
      if os.path.exists(tmp):
        os.remove(tmp)
    raise
  if writer is not None:
    writer.close()
  paths = [os.path.join(out_dir, f"{name}-{i:05d}-of-{len(tmp_paths):05d}.array_record") for i in range(len(tmp_paths))]
  for tmp, path in zip(tmp_paths, paths):
    os.replace(tmp, path)
  return paths


class TfdsSource:
  """A TFDS dataset prepared as ArrayRecord, read with `tfds.data_source` (images left encoded)."""

  def __init__(self, name: str, split: str, *, data_dir: str | None):
    import tensorflow_datasets as tfds
    from vlmjax.data import tfds_shapes  # registers the shapes builder  # noqa: F401
    spec = f"tfds:{name}:{split}"
    try:
      builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # noqa: BLE001 -- tfds raises many types for an unknown or unprepared name
      raise DataError(f"{spec}: no TFDS dataset {name!r} in data_dir {data_dir!r} "
                      f"({type(e).__name__}); prepare it or set data.train.data_dir") from None
    if name.split("/")[0] == tfds_shapes.VlmjaxShapes.name and not builder.is_prepared():
      builder.download_and_prepare(file_format="array_record")  # procedural: nothing to download
    if not builder.is_prepared():
      raise DataError(f"{spec}: {name!r} is not prepared in data_dir {builder.data_dir!r}; prepare it once with "
                      f"`tfds build {name} --file_format=array_record` (or set data.train.data_dir / "
                      f"evals.<name>.data.data_dir to where it is)")
    if split not in builder.info.splits:
      raise DataError(f"{spec}: no split {split!r}; valid: {', '.join(builder.info.splits)}")
    decoders = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
                if isinstance(f, tfds.features.Image)}
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir or None, decoders=decoders,
                                      builder_kwargs={"file_format": "array_record"})
    except Exception as e:  # noqa: BLE001
      raise DataError(f"{spec}: cannot read as ArrayRecord ({type(e).__name__}: {str(e)[:200]}); "
                      "prepare it with file_format='array_record'") from None
    self.spec = spec

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    ex = self._source[int(i)]
    caption = next((ex[n] for n in CAPTION_FEATURES if n in ex), None)
    extra = {"label": int(ex["label"])} if "label" in ex else {}
    captions = ex["captions"] if "captions" in ex else caption if isinstance(caption, (list, np.ndarray)) else None
    if isinstance(captions, dict):  # a Sequence of {"text", ...} as in coco_captions
      captions = captions["text"]
    if captions is not None:
      extra["captions"] = list(captions)
      caption = extra["captions"][0] if extra["captions"] else None
    key = ex.get("key", str(int(i)))
    key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    if isinstance(ex.get("regions"), dict):  # a Sequence({"bbox", "text"}): boxes (ymin, xmin, ymax, xmax)
      extra.update(regions_lib.from_tfds(ex["regions"].get("bbox", ()), ex["regions"].get("text", ()),
                                         f"record {key!r} of {self.spec}"))
    return record(key, ex.get("image"), caption, self.spec, **extra)

  def __repr__(self) -> str:
    return f"TfdsSource({self.spec}, {len(self)} examples)"
