"""Regions (boxes with texts) in records: validation, crops, the multi-object shapes set, and every
source carrying them (tar shards, `data convert` to ArrayRecord, TFDS), bad ones as a marker."""

import hashlib
import io
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from test_data_helpers import jpeg, write_tar
from vlmjax import cli
from vlmjax.data import records, regions, sources, synthetic, tar_source, tar_stream, tokenizers, transforms
from vlmjax.errors import DataError

# synthetic.example before regions existed (seeds 0..2, five indices, 32 and 64 px): the set is unchanged.
SHAPES_HASH = "541f0e3a5f9c3f9083711828c4e45e7cc28eba38fbcc2b1ac74ac35ae45d5c10"


def box(x0, y0, x1, y1, text="thing"):
  return {"box": [x0, y0, x1, y1], "text": text}


# --- regions.crop --------------------------------------------------------------------------------

def test_crop_clips_normalises_and_drops_against_hand_values():
  # A 200 x 100 image, crop (50, 10, 100, 80): x 50..150, y 10..90 in pixels.
  given = [box(0.1, 0.2, 0.4, 0.6, "half in"),     # x 20..80, y 20..60: 30x40 of 60x40 inside = 0.5
           box(0.5, 0.5, 0.6, 0.7, "inside"),      # x 100..120, y 50..70
           box(0.0, 0.0, 0.3, 0.2, "corner"),      # x 0..60, y 0..20: 10x10 of 60x20 inside = 1/12
           box(0.9, 0.9, 1.0, 1.0, "outside")]     # x 180..200: none of it
  got = regions.crop(given, (50, 10, 100, 80), 200, 100)
  assert [r["text"] for r in got] == ["half in", "inside"]
  assert got[0]["box"] == pytest.approx([0.0, 10 / 80, 30 / 100, 50 / 80])
  assert got[1]["box"] == pytest.approx([50 / 100, 40 / 80, 70 / 100, 60 / 80])
  loose = regions.crop(given, (50, 10, 100, 80), 200, 100, min_visible=0.05)
  assert [r["text"] for r in loose] == ["half in", "inside", "corner"]
  assert loose[2]["box"] == pytest.approx([0.0, 0.0, 10 / 100, 10 / 80])
  assert [r["text"] for r in regions.crop(given, (50, 10, 100, 80), 200, 100, min_visible=0.0)] == \
      ["half in", "inside", "corner"]  # "outside" shares no area with the crop
  assert regions.crop(given[:2], (0, 0, 200, 100), 200, 100) == given[:2]  # the whole image: unchanged
  with pytest.raises(ValueError, match="sizes must be positive"):
    regions.crop(given, (0, 0, 0, 10), 200, 100)


def test_decode_reports_the_crop_in_original_pixels_when_the_jpeg_is_decoded_reduced(monkeypatch):
  """A 640x480 JPEG needed at 32 px is decoded at 1/8 or 1/4; the crop still comes in the original's
  pixels, so a region mapped through it lands on the object in the output image."""
  pixels = np.full((480, 640, 3), 20, np.uint8)
  pixels[150:270, 200:360] = 250                       # the object: x 200..360, y 150..270
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
  data = buf.getvalue()
  object_region = [box(200 / 640, 150 / 480, 360 / 640, 270 / 480, "white box")]
  flags = []
  real = transforms.cv2.imdecode
  monkeypatch.setattr(transforms.cv2, "imdecode",
                      lambda buf, flag: flags.append(flag & ~cv2.IMREAD_IGNORE_ORIENTATION) or real(buf, flag))
  decoder = transforms.ImageDecoder(32, "random_resized_crop", min_scale=0.3)
  checked = 0
  for seed in range(12):
    image, crop, size = decoder.decode(data, np.random.default_rng(seed))
    assert size == (640, 480)
    assert crop == transforms.crop_box(640, 480, "random_resized_crop", np.random.default_rng(seed), 0.3)
    assert np.array_equal(image, decoder(data, np.random.default_rng(seed)))  # __call__: the same image
    mapped = regions.crop(object_region, crop, *size, min_visible=0.3)
    bright = np.argwhere(image.mean(-1) > 200)
    if not mapped or len(bright) < 4:
      continue
    x0, y0, x1, y1 = (v * 32 for v in mapped[0]["box"])
    (top, left), (bottom, right) = bright.min(0), bright.max(0) + 1
    assert abs(left - x0) <= 1.5 and abs(right - x1) <= 1.5 and abs(top - y0) <= 1.5 and abs(bottom - y1) <= 1.5
    checked += 1
  assert checked >= 4
  assert set(flags) <= {cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8}  # never the full decode
  array = np.zeros((30, 40, 3), np.uint8)
  assert transforms.ImageDecoder(16, "center_crop").decode(array)[1:] == ((5, 0, 30, 30), (40, 30))


# --- the multi-object shapes set -----------------------------------------------------------------

def class_of(text: str) -> int:
  _, color, shape = text.split(" ")
  return list(synthetic.COLORS).index(color) * len(synthetic.SHAPES) + synthetic.SHAPES.index(shape)


@pytest.mark.parametrize("size", [32, 48])
def test_shapes_multi_boxes_are_the_tight_boxes_of_each_objects_pixels(size):
  for i in range(40):
    ex = synthetic.multi_example(i, seed=1, image_size=size)
    again = synthetic.multi_example(i, seed=1, image_size=size)
    assert np.array_equal(ex["image"], again["image"]) and np.array_equal(ex["segmentation"], again["segmentation"])
    assert (ex["caption"], ex["label"], ex["regions"]) == (again["caption"], again["label"], again["regions"])
    seg = ex["segmentation"]
    assert seg.dtype == np.int16 and seg.shape == (size, size) and 2 <= len(ex["regions"]) <= 4
    assert sorted(np.unique(seg[seg >= 0]).tolist()) == sorted(class_of(r["text"]) for r in ex["regions"])
    pixels = []
    for r in ex["regions"]:
      mask = seg == class_of(r["text"])
      ys, xs = np.nonzero(mask)
      assert r["box"] == [xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size]
      assert (ex["image"][mask] == synthetic.COLORS[r["text"].split(" ")[1]]).all()
      pixels.append(mask.sum())
      assert " ".join(r["text"].split(" ")[1:]) in ex["caption"]
    assert pixels == sorted(pixels, reverse=True) and ex["label"] == class_of(ex["regions"][0]["text"])
    assert regions.check(ex["regions"], "x") == ex["regions"]


def test_shapes_multi_captions_fit_the_tokenizer_and_the_single_object_set_is_unchanged():
  tok = tokenizers.ByteTokenizer()
  longest = max(len(synthetic.multi_example(i, seed=0, image_size=32)["caption"]) for i in range(1500))
  assert longest <= synthetic.MULTI_CAPTION_CHARS == 62  # + bos + eos = 64 tokens
  worst = [{"text": f"large {c} triangle", "short": f"{c} triangle", "cell": k}
           for k, c in enumerate(("yellow", "purple", "orange", "white"))]
  caption = synthetic.multi_caption(worst)
  assert len(caption) <= 62 and tok.decode(tok.encode(caption, 64)) == caption
  h = hashlib.sha256()
  for seed in (0, 1, 2):
    for i in (0, 1, 7, 123, 99_999):
      for s in (32, 64):
        ex = synthetic.example(i, seed=seed, image_size=s)
        h.update(ex["image"].tobytes())
        h.update(repr((ex["key"], ex["caption"], ex["label"])).encode())
  assert h.hexdigest() == SHAPES_HASH


def test_shapes_multi_spec_opens_and_refuses_small_images():
  src = sources.open_source("synthetic:shapes_multi:test", image_size=32)
  rec = src[3]
  want = synthetic.multi_example(3, seed=2, image_size=32)
  assert np.array_equal(rec["segmentation"], want["segmentation"]) and rec["regions"] == want["regions"]
  assert sources.class_names("synthetic:shapes_multi") == synthetic.CLASS_NAMES
  with pytest.raises(DataError, match=r"image_size >= 32, got 16"):
    sources.open_source("synthetic:shapes_multi", image_size=16)
  with pytest.raises(DataError, match=r"valid: synthetic:shapes\|shapes_multi"):
    sources.open_source("synthetic:blobs")


# --- every source --------------------------------------------------------------------------------

def test_regions_round_trip_tar_convert_arrayrecord(tmp_path, capsys):
  paths = synthetic.write_tar_shards(str(tmp_path / "tars"), 2, 5, image_size=64, kind="shapes_multi")
  want = {f"{s:05d}{j:04d}": synthetic.multi_example(s * 5 + j, seed=0, image_size=64)["regions"]
          for s in range(2) for j in range(5)}
  indexed = tar_source.TarSource(f"{tmp_path}/tars/*.tar")
  assert {indexed[i]["key"]: indexed[i]["regions"] for i in range(len(indexed))} == want
  streamed = tar_stream.TarStream(paths, seed=0, shuffle_shards=False, repeat=False)
  assert {r["key"]: r["regions"] for r in streamed} == want
  out = tmp_path / "ar"
  assert cli.main(["data", "convert", f"tar:{tmp_path}/tars/*.tar", "--out", str(out), "--workers", "1"]) == 0
  back = sources.open_source(f"arrayrecord:{out}/*.array_record")
  assert {back[i]["key"]: back[i]["regions"] for i in range(len(back))} == want  # 64 px: boxes k/64, exact
  capsys.readouterr()
  assert cli.main(["data", "inspect", f"arrayrecord:{out}/*.array_record", "--num", "1"]) == 0
  assert f"({len(want['000000000'])} regions)" in capsys.readouterr().out
  plain = synthetic.write_tar_shards(str(tmp_path / "plain"), 1, 2)  # the single-object set: no regions
  assert all("regions" not in r for r in tar_stream.TarStream(plain, seed=0, shuffle_shards=False, repeat=False))


def test_arrayrecord_regions_keep_their_decimals_and_tfds_layout_is_ymin_xmin():
  given = [box(0.1, 0.2, 0.3, 0.7, "a"), box(0.0, 0.55, 1.0, 0.95, "b c")]
  rec = records.parse(records.serialize("k", b"img", "cap", given), "f.array_record")
  assert rec["regions"] == given
  assert records.parse(records.serialize("k", b"img", "cap", []), "f")["regions"] == []
  assert "regions" not in records.parse(records.serialize("k", b"img", "cap"), "f")
  # An example as TFDS itself serialises Sequence({"bbox": BBoxFeature(), "text": Text()}).
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import example_serializer
  features = tfds.features.FeaturesDict({
      "key": tfds.features.Text(), "image": tfds.features.Text(), "caption": tfds.features.Text(),
      "regions": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(), "text": tfds.features.Text()})})
  encoded = features.encode_example({"key": "t", "image": "img", "caption": "cap", "regions": {
      "bbox": [tfds.features.BBox(ymin=0.1, xmin=0.2, ymax=0.5, xmax=0.9)], "text": ["red circle"]}})
  data = example_serializer.ExampleSerializer(features.get_serialized_info()).serialize_example(encoded)
  assert records.parse(data, "t.array_record")["regions"] == [box(0.2, 0.1, 0.9, 0.5, "red circle")]


def test_tfds_shapes_multi_config_reads_regions(tmp_path):
  src = sources.open_source("tfds:vlmjax_shapes/multi:validation", data_dir=str(tmp_path))
  assert len(src) == 16
  for i in range(4):
    rec = src[i]
    want = synthetic.multi_example(int(rec["key"][2:]), seed=1, image_size=32)
    assert (rec["regions"], rec["caption"], rec["label"]) == (want["regions"], want["caption"], want["label"])


# --- bad regions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, match", [
    ([box(0.1, 0.2, 1.5, 0.9)], r"region 0: box \[0.1, 0.2, 1.5, 0.9\] is outside \[0, 1\]"),
    ([box(0.1, 0.2, 0.3, 0.4), box(0.5, 0.2, 0.4, 0.9)], r"region 1: box .* is inverted or empty"),
    ([box(0.5, 0.2, 0.5, 0.9)], r"region 0: box \[0.5, 0.2, 0.5, 0.9\] is inverted or empty"),
    ([{"box": [0.1, 0.2, 0.3], "text": "a"}], r"region 0: box \[0.1, 0.2, 0.3\] is not 4 numbers"),
    ([{"box": [0.1, float("nan"), 0.3, 0.4], "text": "a"}], r"region 0: box \[0.1, nan, 0.3, 0.4\] holds a value that is not a finite number"),
    ([{"box": [0.1, 0.2, 0.3, 0.4]}], r"region 0 has text None, not a non-empty string"),
    ([{"box": [0.1, 0.2, 0.3, 0.4], "text": "  "}], r"region 0 has text '  ', not a non-empty string"),
    ("0.1 0.2", r"regions '0.1 0.2' is not a list"),
    ([[0.1, 0.2, 0.3, 0.4]], r"region 0 \[0.1, 0.2, 0.3, 0.4\] is not a dict with a box"),
])
def test_bad_regions_are_one_line_errors_naming_the_record(value, match):
  with pytest.raises(regions.BadRegion, match=r"^record 'k1' in s.tar: " + match) as e:
    regions.check(value, "record 'k1' in s.tar")
  assert "\n" not in str(e.value) and "valid: a list of" in str(e.value)
  marked = regions.fields(value, "record 'k1' in s.tar")
  assert marked["regions"] is None and marked[regions.BAD_KEY] == str(e.value)


def test_bad_regions_in_every_source_are_a_marker_not_a_crash(tmp_path):
  meta = lambda rs: json.dumps({"regions": rs}).encode()
  members = [("a.jpg", jpeg(1)), ("a.txt", b"one"), ("a.json", meta([box(0.2, 0.1, 0.1, 0.5)])),
             ("b.jpg", jpeg(2)), ("b.txt", b"two"), ("b.json", meta([box(0.1, 0.1, 0.5, 0.5)])),
             ("c.jpg", jpeg(3)), ("c.txt", b"three"), ("c.json", b'{"regions": [oops')]
  path = write_tar(tmp_path / "s.tar", members)
  for recs in (list(tar_stream.TarStream([path], seed=0, shuffle_shards=False, repeat=False)),
               list(sources.records_of(tar_source.TarSource(path)))):
    assert [r["key"] for r in recs] == ["a", "b", "c"]
    assert recs[0]["regions"] is None and recs[0]["_bad_regions"].startswith(f"sample 'a' in {path}: region 0: box")
    assert recs[1]["regions"] == [box(0.1, 0.1, 0.5, 0.5)] and "_bad_regions" not in recs[1]
    assert recs[2]["regions"] is None and "its .json is not valid JSON" in recs[2]["_bad_regions"]
  counts = {"written": 0, "skipped": 0}
  from vlmjax.data import convert
  kept = list(convert.usable(tar_stream.TarStream([path], seed=0, shuffle_shards=False, repeat=False), counts))
  assert [r["key"] for r in kept] == ["b"] and counts == {"written": 1, "skipped": 2}
  from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2
  feats = {"key": tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[b"k"])),
           "caption": tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[b"c"])),
           "regions/bbox": tf_feature_pb2.Feature(float_list=tf_feature_pb2.FloatList(value=[0.1, 0.2, 0.3])),
           "regions/text": tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[b"x"]))}
  data = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=feats)).SerializeToString()
  rec = records.parse(data, "f.array_record")
  assert rec["regions"] is None and rec["_bad_regions"].startswith(
      "record 'k' in f.array_record: regions/bbox holds 3 numbers for 1 regions/text entries")
