"""Evaluation sets in the layouts people have: CLIP_benchmark's webdataset sets (`wds:`), ImageNet-style
class folders (`folder:`), and several captions per image read alike from every source."""

import io
import json
import os

import pytest
import tensorflow_datasets as tfds

from test_data_helpers import jpeg, write_tar
from vlmjax import cli
from vlmjax.errors import DataError
from vlmjax.data import bench_sources, sources, tar_source, tar_stream

NAMES = ("airplane", "automobile", "bird")
TEMPLATES = ("a photo of a {c}.", "a blurry photo of the {c}.", "{c}: {{braces}} stay")
COCO = (["a dog on a sofa", "a brown dog resting", "sofa with a dog"], ["one caption only"],
        ["two captions", "the second one"])


def wds_classification(root, *, labels_per_shard=((0, 1), (2, 0), (1,)), nshards=True, extra=()):
  """ROOT/test/{0,1,2}.tar (CLIP_benchmark's layout: sKKKKKKK.webp + .cls), classnames and templates."""
  (root / "test").mkdir(parents=True)
  n = 0
  for s, labels in enumerate(labels_per_shard):
    members = []
    for label in labels:
      members += [(f"s{n:07d}.webp", jpeg(n)), (f"s{n:07d}.cls", f"{label}".encode())]
      n += 1
    write_tar(root / "test" / f"{s}.tar", members + (list(extra) if s == 0 else []))
  if nshards:
    (root / "test" / "nshards.txt").write_text(f"{len(labels_per_shard)}\n")
  (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
  (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
  return root


def wds_retrieval(root, captions=COCO):
  (root / "test").mkdir(parents=True)
  write_tar(root / "test" / "0.tar", [m for i, caps in enumerate(captions) for m in (
      (f"s{i:07d}.jpg", jpeg(i)), (f"s{i:07d}.txt", "\n".join(caps).encode()))])
  (root / "test" / "nshards.txt").write_text("1\n")
  (root / "dataset_type.txt").write_text("retrieval\n")
  return root


def folders(root, counts=(("cat", 2), ("dog", 1), ("ant", 3))):
  for name, n in counts:
    (root / name).mkdir(parents=True)
    for i in range(n):
      (root / name / f"{i}.jpg").write_bytes(jpeg(i))
  return root


def rows(src) -> list[dict]:
  return [src[i] for i in range(len(src))]


def plain(src) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in ("image", "_shard")} for r in rows(src)]


# -- wds:ROOT[:SPLIT] ------------------------------------------------------------------------------------------

def test_wds_classification_records_class_names_and_templates(tmp_path):
  root = wds_classification(tmp_path / "wds_cifar")
  src = sources.open_source(f"wds:{root}")
  assert isinstance(src, bench_sources.WdsSource) and len(src) == 5
  assert [r["label"] for r in plain(src)] == [0, 1, 2, 0, 1]
  assert plain(src)[0] == {"key": "s0000000", "caption": None, "label": 0}
  assert src[3]["image"] == jpeg(3)
  assert sources.class_names(f"wds:{root}") == NAMES
  got = sources.templates(f"wds:{root}:test")
  assert got == ("a photo of a {}.", "a blurry photo of the {}.", "{}: {{braces}} stay")
  assert [t.format("cat") for t in got][2] == "cat: {braces} stay"  # as CLIP_benchmark's format(c=...) gives
  assert sources.templates("synthetic:shapes") is None and sources.templates(f"tar:{root}/test/0.tar") is None
  # The same records streamed (training) and scanned (inspect / convert), for free.
  scanned = list(sources.records_of(sources.open_source(f"wds:{root}", mode="scan")))
  assert [r["key"] for r in scanned] == [r["key"] for r in plain(src)]


def test_wds_shards_in_numeric_order_with_or_without_nshards(tmp_path):
  labels = tuple((i % 3,) for i in range(12))  # 0.tar .. 11.tar: 10.tar sorts before 2.tar as text
  for nshards in (True, False):
    root = wds_classification(tmp_path / f"n{nshards}", labels_per_shard=labels, nshards=nshards)
    src = sources.open_source(f"wds:{root}:test")
    assert [src[i]["key"] for i in range(12)] == [f"s{i:07d}" for i in range(12)]
    assert os.path.basename(src[10]["_shard"]) == "10.tar"


def test_wds_retrieval_one_caption_per_line(tmp_path):
  root = wds_retrieval(tmp_path / "wds_flickr")
  src = sources.open_source(f"wds:{root}")
  assert plain(src) == [
      {"key": "s0000000", "caption": COCO[0][0], "captions": COCO[0]},
      {"key": "s0000001", "caption": COCO[1][0]},
      {"key": "s0000002", "caption": COCO[2][0], "captions": COCO[2]}]
  assert sources.class_names(f"wds:{root}") is None and sources.templates(f"wds:{root}") is None


def test_wds_sample_without_image_or_label_is_skipped_and_counted(tmp_path):
  extra = [("s9000000.cls", b"1"), ("s9000001.webp", jpeg(9))]  # a label without image; an image without label
  src = sources.open_source(f"wds:{wds_classification(tmp_path / 'w', extra=extra)}")
  assert len(src) == 5 and src.skipped == {"no_image": 1, "no_label": 1}
  assert "skipped no_image 1, no_label 1" in repr(src)


@pytest.mark.parametrize("case, match", [
    ("bad_cls", r"0\.tar: sample 's0000001' has cls 'cat'; expected its class index"),
    ("label_too_big", r"label 7 in the shards, but .*classnames.txt names 3 classes; labels must be 0..2"),
    ("no_split", r"no split 'train' .*; valid: test"),
    ("missing_shard", r"2\.tar is missing \(1 of the 3 shards nshards.txt names\)"),
    ("multilabel", r"dataset_type.txt says 'multilabel'; wds sets of type classification"),
    ("url", r"reads a local copy; download it first \(e.g. `hf download clip-benchmark/wds_cifar10"),
    ("no_labels_at_all", r"wds split '.*test': no samples with an image and a label \(cls\) in 3 shard.*no_label 5"),
])
def test_wds_bad_input_is_one_line_naming_the_path(tmp_path, case, match):
  root = wds_classification(tmp_path / "w")
  spec = f"wds:{root}"
  if case == "bad_cls":
    write_tar(root / "test" / "0.tar", [("s0000000.webp", jpeg(0)), ("s0000000.cls", b"0"),
                                        ("s0000001.webp", jpeg(1)), ("s0000001.cls", b"cat")])
  elif case == "label_too_big":
    write_tar(root / "test" / "1.tar", [("s0000005.webp", jpeg(5)), ("s0000005.cls", b"7")])
  elif case == "no_split":
    spec += ":train"
  elif case == "missing_shard":
    os.remove(root / "test" / "2.tar")
  elif case == "multilabel":
    (root / "dataset_type.txt").write_text("multilabel\n")
  elif case == "url":
    spec = "wds:https://huggingface.co/datasets/clip-benchmark/wds_cifar10/tree/main"
  elif case == "no_labels_at_all":
    for s in range(3):
      write_tar(root / "test" / f"{s}.tar", [(f"s{s}{i}.webp", jpeg(i)) for i in range(2 if s < 2 else 1)])
  with pytest.raises(DataError, match=match) as e:
    sources.open_source(spec)
  assert "\n" not in str(e.value)


def test_wds_class_names_and_templates_faults(tmp_path):
  root = wds_classification(tmp_path / "w")
  os.remove(root / "classnames.txt")
  with pytest.raises(DataError, match=r"classnames.txt is missing; a classification set needs its class names"):
    sources.class_names(f"wds:{root}")
  (root / "classnames.txt").write_text("airplane\n\nbird\n")
  with pytest.raises(DataError, match=r"classnames.txt: line 2 is blank"):
    sources.class_names(f"wds:{root}")
  (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na photo.\n")
  with pytest.raises(DataError, match=r"templates.txt: line 2 \('a photo.'\) is not a template; expected one '\{c\}'"):
    sources.templates(f"wds:{root}")
  (root / "zeroshot_classification_templates.txt").write_text("a {c} and a {}.\n")
  with pytest.raises(DataError, match=r"line 1 .* is not a template"):
    sources.templates(f"wds:{root}")
  with pytest.raises(DataError, match=r"'wds:' names no directory; expected wds:ROOT\[:SPLIT\]"):
    sources.open_source("wds:")
  with pytest.raises(DataError, match=r"is not a directory; expected ROOT/SPLIT/\*.tar"):
    sources.class_names(f"wds:{tmp_path}/nope:test")


# -- folder:ROOT -----------------------------------------------------------------------------------------------

def test_folder_labels_in_sorted_class_order_keys_relative(tmp_path):
  root = folders(tmp_path / "val")
  (root / "dog" / "sub").mkdir()
  (root / "dog" / "sub" / "x.PNG").write_bytes(jpeg(7))     # nested, upper-case extension
  (root / "dog" / "notes.txt").write_text("not an image")  # ignored
  (root / ".cache").mkdir()                                # hidden: not a class
  src = sources.open_source(f"folder:{root}")
  assert sources.class_names(f"folder:{root}") == ("ant", "cat", "dog")
  assert [(r["key"], r["label"]) for r in plain(src)] == [
      ("ant/0.jpg", 0), ("ant/1.jpg", 0), ("ant/2.jpg", 0), ("cat/0.jpg", 1), ("cat/1.jpg", 1),
      ("dog/0.jpg", 2), ("dog/sub/x.PNG", 2)]
  assert src[6]["image"] == jpeg(7) and src[0]["caption"] is None
  assert sources.templates(f"folder:{root}") is None
  (root / "classnames.txt").write_text("ant\nhouse cat\ndog\n")
  assert sources.class_names(f"folder:{root}") == ("ant", "house cat", "dog")
  os.remove(root / "ant" / "0.jpg")
  assert src[0] == {"key": "ant/0.jpg", "_skips": [("missing_file", os.path.join(str(root), "ant/0.jpg"))]}


def test_folder_faults_are_one_line(tmp_path):
  root = folders(tmp_path / "val")
  (root / "classnames.txt").write_text("ant\ncat\n")
  with pytest.raises(DataError, match=r"classnames.txt names 2 classes but .* has 3 class folders"):
    sources.class_names(f"folder:{root}")
  (root / "empty").mkdir()
  with pytest.raises(DataError, match=r"class folder '.*empty' holds no image; valid extensions: .jpg"):
    sources.open_source(f"folder:{root}")
  (tmp_path / "bare").mkdir()
  with pytest.raises(DataError, match=r"no class folders; expected ROOT/<class>/<image files>"):
    sources.open_source(f"folder:{tmp_path}/bare")
  with pytest.raises(DataError, match=r"not a directory"):
    sources.class_names(f"folder:{tmp_path}/nope")
  with pytest.raises(DataError, match=r"'folder:' names no directory"):
    sources.open_source("folder:")


# -- several captions per image: every source gives the same list ------------------------------------------------

def img2dataset_shard(path, captions=COCO):
  """A multi-line .txt for the first and last images, a .json "captions" list (and a one-line .txt) for the
  second; every sample also has img2dataset's usual .json metadata."""
  members = []
  for i, caps in enumerate(captions):
    meta = {"key": f"{i:09d}", "status": "success", **({"captions": list(caps)} if i == 1 else {})}
    text = caps[0] if i == 1 else "\n".join(caps) + "\n"
    members += [(f"{i:09d}.jpg", jpeg(i)), (f"{i:09d}.txt", text.encode()), (f"{i:09d}.json", json.dumps(meta).encode())]
  return write_tar(path, members)


def captions_of(recs) -> list[tuple[str, list[str]]]:
  return [(r["caption"], r.get("captions", [r["caption"]])) for r in recs if r.get("image") is not None]


def test_tar_json_and_multiline_captions(tmp_path):
  img2dataset_shard(tmp_path / "00000.tar", captions=(["a", "b"], ["json one", "json two"], [" only ", ""]))
  src = tar_source.TarSource(f"{tmp_path}/00000.tar")
  assert plain(src) == [{"key": "000000000", "caption": "a", "captions": ["a", "b"]},
                        {"key": "000000001", "caption": "json one", "captions": ["json one", "json two"]},
                        {"key": "000000002", "caption": "only"}]
  streamed = next(iter(sources.open_source(f"tar:{tmp_path}/00000.tar", mode="stream", seed=0)))
  assert streamed.get("captions", [streamed["caption"]])[0] == streamed["caption"]  # training: first, or one drawn


def test_every_source_gives_the_same_captions(tmp_path):
  (tmp_path / "tars").mkdir()
  img2dataset_shard(tmp_path / "tars" / "00000.tar")
  want = [(caps[0], list(caps)) for caps in COCO]
  tar = sources.open_source(f"tar:{tmp_path}/tars/00000.tar")
  stream = list(tar_stream.TarStream([f"{tmp_path}/tars/00000.tar"], seed=0, shuffle_shards=False, repeat=False))
  wds = sources.open_source(f"wds:{wds_retrieval(tmp_path / 'wds')}")
  assert captions_of(rows(tar)) == captions_of(stream) == captions_of(rows(wds)) == want
  for spec, name in ((f"tar:{tmp_path}/tars/*.tar", "from_tar"), (f"wds:{tmp_path}/wds", "from_wds")):
    assert cli.main(["data", "convert", spec, "--out", str(tmp_path / name)]) == 0
    converted = sources.open_source(f"arrayrecord:{tmp_path}/{name}/*.array_record")
    assert captions_of(rows(converted)) == want
  VlmjaxCaptionsTest(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
  tfds_src = sources.open_source("tfds:vlmjax_captions_test:test", data_dir=str(tmp_path / "tfds"))
  assert sorted(captions_of(rows(tfds_src))) == sorted(want)  # TFDS orders examples by the hash of their key


class VlmjaxCaptionsTest(tfds.core.GeneratorBasedBuilder):
  """A TFDS set with a `captions` Sequence(Text()) feature (as coco_captions has), prepared without TensorFlow."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "captions": tfds.features.Sequence(tfds.features.Text()), "key": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i, caps in enumerate(COCO):
      yield str(i), {"image": io.BytesIO(jpeg(i)), "captions": list(caps), "key": f"{i:09d}"}
