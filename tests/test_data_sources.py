"""Sources: local and HTTP tar streams, ArrayRecord, TFDS, specs; the inspect and convert tools."""

import functools
import http.server
import os
import threading

import numpy as np
import pytest

from test_data_helpers import sample, write_shards, write_tar
from vlmjax import cli
from vlmjax.config import ConfigError
from vlmjax.data import records, sources, synthetic, tar_stream, transforms


@pytest.fixture
def http_dir(tmp_path):
  """Serves tmp_path/www on 127.0.0.1 (a free port) for one test; yields (directory, base URL)."""
  www = tmp_path / "www"
  www.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield www, f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()
  thread.join()


def read_all(paths, **kw):
  return list(tar_stream.TarStream(paths, seed=0, shuffle_shards=False, repeat=False, **kw))


def test_tar_shards_round_trip_random_access(tmp_path):
  synthetic.write_tar_shards(str(tmp_path), num_shards=3, samples_per_shard=5, image_size=24, seed=0)
  src = sources.open_source(f"tar:{tmp_path}/{{00000..00002}}.tar", image_size=24)
  assert len(src) == 15 and sum(src.skipped.values()) == 0
  ex = src[7]
  want = synthetic.example(7, seed=0, image_size=24)
  assert ex["caption"] == want["caption"] and ex["key"] == "000010002"
  decoded = transforms.decode_image(ex["image"], 24)
  assert np.abs(decoded.astype(int) - want["image"]).mean() < 6  # JPEG at quality 95
  assert len(sources.open_source(f"tar:{tmp_path}/*.tar", image_size=24)) == 15


def test_tar_stream_local_and_http_read_the_same_records(tmp_path, http_dir):
  www, url = http_dir
  write_shards(www, 3, 4)
  local = read_all(sources.expand_pattern(f"{www}/{{00000..00002}}.tar"))
  remote_src = sources.open_source(f"tar:{url}/{{00000..00002}}.tar", image_size=16)
  assert isinstance(remote_src, tar_stream.TarStream)  # URLs are streamed, never indexed or downloaded
  remote = list(remote_src)
  assert [r["caption"] for r in local] == [f"s {s} {j}" for s in range(3) for j in range(4)]
  assert [(r["key"], r["caption"], r["image"]) for r in remote] == [(r["key"], r["caption"], r["image"]) for r in local]


def test_tar_stream_resumes_mid_shard_over_http(tmp_path, http_dir):
  www, url = http_dir
  write_shards(www, 2, 5)
  ds = tar_stream.TarStream([f"{url}/00000.tar", f"{url}/00001.tar"], seed=0, shuffle_shards=False, repeat=False)
  it = iter(ds)
  head = [next(it)["caption"] for _ in range(3)]
  state = it.get_state()
  rest = [r["caption"] for r in it]
  it2 = iter(ds)
  it2.set_state(state)
  assert [r["caption"] for r in it2] == rest and len(head + rest) == 10


def test_arrayrecord_convert_inspect_and_read(tmp_path, capsys):
  write_shards(tmp_path / "tars", 2, 3)
  out = tmp_path / "ar"
  assert cli.main(["data", "convert", f"tar:{tmp_path}/tars/*.tar", "--out", str(out), "--per-file", "4"]) == 0
  assert "wrote 6 examples in 2 ArrayRecord file(s)" in capsys.readouterr().out
  src = sources.open_source(f"arrayrecord:{out}/*.array_record", image_size=16)
  assert len(src) == 6 and sorted(src[i]["caption"] for i in range(6)) == sorted(
      f"s {s} {j}" for s in range(2) for j in range(3))
  assert transforms.decode_image(src[0]["image"], 16).shape == (16, 16, 3)
  assert cli.main(["data", "inspect", f"arrayrecord:{out}/*.array_record", "--num", "2"]) == 0
  printed = capsys.readouterr().out
  assert "16x16" in printed and "6 examples" in printed and "'s 0 0'" in printed


def test_arrayrecord_bad_record_is_a_skip_marker():
  rec = records.parse(b"\xff\x00garbage", "f.array_record")
  assert rec.get("image") is None and rec["_skips"] == [("bad_record", "f.array_record")]


def test_tfds_shapes_builder_prepared_and_read_without_tensorflow(tmp_path, capsys):
  import sys
  src = sources.open_source("tfds:vlmjax_shapes/tiny:validation", image_size=32, data_dir=str(tmp_path))
  assert len(src) == 16 and "tensorflow" not in sys.modules
  ex = src[0]
  assert isinstance(ex["image"], bytes) and transforms.decode_image(ex["image"], 32).shape == (32, 32, 3)
  assert any(c in ex["caption"] for c in synthetic.COLORS) and 0 <= ex["label"] < len(synthetic.CLASS_NAMES)
  # The prepared files are plain ArrayRecord of the same examples.
  ar = sources.open_source(f"arrayrecord:{tmp_path}/vlmjax_shapes/tiny/1.0.0/*validation.array_record*", image_size=32)
  assert len(ar) == 16
  with pytest.raises(ConfigError, match="no split 'nope'"):
    sources.open_source("tfds:vlmjax_shapes/tiny:nope", image_size=32, data_dir=str(tmp_path))
  assert cli.main(["data", "inspect", "tfds:vlmjax_shapes/tiny:test", "--data-dir", str(tmp_path), "--num", "1"]) == 0
  assert "32x32" in capsys.readouterr().out


def test_synthetic_shapes_source():
  src = sources.open_source("synthetic:shapes:validation", image_size=24)
  assert src[3]["image"].shape == (24, 24, 3) and src[3]["caption"] == synthetic.example(3, seed=1, image_size=24)["caption"]


@pytest.mark.parametrize("spec, match", [
    ("tar:/nonexistent/{00000..00003}.tar", "matches no file"),
    ("tar:/nonexistent/*.tar", "matches no file"),
    ("arrayrecord:/nonexistent/*.array_record", "matches no file"),
    ("tar:", "names no path"),
    ("synthetic:cats", "unknown synthetic set"),
    ("synthetic:shapes:dev", "unknown split"),
    ("tfds:", "names no dataset"),
    ("webdataset:/x", "unknown data source"),
    ("tar:http://127.0.0.1:1/*.tar", "cannot hold globs"),
])
def test_bad_specs_are_one_line_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match) as e:
    sources.open_source(spec, image_size=32)
  assert "\n" not in str(e.value)


def test_brace_range_keeps_missing_shards_for_counting(tmp_path):
  write_tar(tmp_path / "00000.tar", sample("a", "x"))
  assert sources.expand_pattern(f"{tmp_path}/{{00000..00002}}.tar") == [
      f"{tmp_path}/00000.tar", f"{tmp_path}/00001.tar", f"{tmp_path}/00002.tar"]


def test_arrayrecord_with_several_captions_per_image(tmp_path):
  png = transforms.encode_png(np.zeros((8, 8, 3), np.uint8))
  recs = [{"key": "a", "image": png, "caption": "one", "captions": ["one", "uno", "eins"]},
          {"key": "b", "image": png, "caption": "two"}]
  records.write_arrayrecord(recs, str(tmp_path))
  src = sources.open_source(f"arrayrecord:{tmp_path}/*.array_record", image_size=8)
  assert src[0]["caption"] == "one" and src[0]["captions"] == ["one", "uno", "eins"]
  assert src[1]["caption"] == "two" and "captions" not in src[1]
  # `data convert` keeps every caption; a record with none is refused before anything is renamed.
  assert cli.main(["data", "convert", f"arrayrecord:{tmp_path}/*.array_record", "--out", str(tmp_path / "c")]) == 0
  copy = sources.open_source(f"arrayrecord:{tmp_path}/c/*.array_record", image_size=8)
  assert copy[0]["captions"] == ["one", "uno", "eins"] and copy[1]["caption"] == "two"
  with pytest.raises(ConfigError, match="'c': no caption to write"):
    records.write_arrayrecord([{"key": "c", "image": png, "caption": "", "captions": []}], str(tmp_path / "d"))
  assert os.listdir(tmp_path / "d") == []  # no file, not even a temporary one, is left
