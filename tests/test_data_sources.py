"""Sources: local and HTTP tar streams, ArrayRecord, TFDS, specs; the inspect and convert tools."""

import functools
import http.server
import os
import threading

import numpy as np
import pytest

from test_data_helpers import sample, write_shards, write_tar
from vlmjax import cli
from vlmjax.errors import DataError
from vlmjax.data import records, shards, sources, synthetic, tar_source, tar_stream, transforms


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


def decode_image(image, size):
  """Encoded bytes or a uint8 array -> uint8 [size, size, 3], resized (aspect not kept)."""
  return transforms.ImageDecoder(size)(image)


def read_all(paths, **kw):
  return list(tar_stream.TarStream(paths, seed=0, shuffle_shards=False, repeat=False, **kw))


def test_tar_shards_round_trip_random_access(tmp_path):
  synthetic.write_tar_shards(str(tmp_path), num_shards=3, samples_per_shard=5, image_size=24, seed=0)
  src = sources.open_source(f"tar:{tmp_path}/{{00000..00002}}.tar", image_size=24)
  assert len(src) == 15 and sum(src.skipped.values()) == 0
  ex = src[7]
  want = synthetic.example(7, seed=0, image_size=24)
  assert ex["caption"] == want["caption"] and ex["key"] == "000010002"
  decoded = decode_image(ex["image"], 24)
  assert np.abs(decoded.astype(int) - want["image"]).mean() < 6  # JPEG at quality 95
  assert len(sources.open_source(f"tar:{tmp_path}/*.tar", image_size=24)) == 15


def test_tar_stream_local_and_http_read_the_same_records(tmp_path, http_dir):
  www, url = http_dir
  write_shards(www, 3, 4)
  local = read_all(shards.expand_pattern(f"{www}/{{00000..00002}}.tar"))
  remote_src = sources.open_source(f"tar:{url}/{{00000..00002}}.tar", mode="scan", image_size=16)
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
  assert decode_image(src[0]["image"], 16).shape == (16, 16, 3)
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
  assert isinstance(ex["image"], bytes) and decode_image(ex["image"], 32).shape == (32, 32, 3)
  assert any(c in ex["caption"] for c in synthetic.COLORS) and 0 <= ex["label"] < len(synthetic.CLASS_NAMES)
  # The prepared files are plain ArrayRecord of the same examples.
  ar = sources.open_source(f"arrayrecord:{tmp_path}/vlmjax_shapes/tiny/1.0.0/*validation.array_record*", image_size=32)
  assert len(ar) == 16
  with pytest.raises(DataError, match="no split 'nope'"):
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
  with pytest.raises(DataError, match=match) as e:
    sources.open_source(spec, image_size=32)
  assert "\n" not in str(e.value)


def test_brace_range_keeps_missing_shards_for_counting(tmp_path):
  write_tar(tmp_path / "00000.tar", sample("a", "x"))
  assert shards.expand_pattern(f"{tmp_path}/{{00000..00002}}.tar") == [
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
  with pytest.raises(DataError, match="'c': no caption to write"):
    records.write_arrayrecord([{"key": "c", "image": png, "caption": "", "captions": []}], str(tmp_path / "d"))
  assert os.listdir(tmp_path / "d") == []  # no file, not even a temporary one, is left


# -- tar streams: epochs without data, http breaks, the end of a finite stream ---------------------------------

def test_a_host_epoch_with_only_a_missing_shard_is_skipped_not_fatal(tmp_path):
  paths = write_shards(tmp_path, 3, 2) + [str(tmp_path / "missing.tar")]
  for host in range(4):  # one shard per host and epoch: every host meets the missing one in some epoch
    ds = tar_stream.TarStream(paths, seed=0, host_index=host, host_count=4)
    first = next(e for e in range(100) if ds.host_shards(e) == [paths[3]])
    it = iter(ds)
    records = [next(it) for _ in range(2 * first + 2)]  # past that epoch
    assert all(r["caption"].startswith("s ") for r in records)
    assert ("missing_shard", paths[3]) in [s for r in records for s in r["_skips"]], host
    it.close()


def test_a_host_whose_every_shard_fails_raises_one_line(tmp_path):
  paths = [str(tmp_path / f"{i}.tar") for i in range(4)]
  (tmp_path / "0.tar").write_bytes(b"junk" * 300)
  with pytest.raises(DataError, match=r"no readable sample in the 4 tar shard\(s\) host 1/2 reads"):
    next(iter(tar_stream.TarStream(paths, seed=0, host_index=1, host_count=2)))
  # Unshuffled, a host only ever gets its own share: that share failing is enough.
  good = write_shards(tmp_path / "good", 1, 2)
  with pytest.raises(DataError, match=r"no readable sample in the 1 tar shard\(s\) host 1/2 reads"):
    next(iter(tar_stream.TarStream(good + paths[:1], seed=0, host_index=1, host_count=2, shuffle_shards=False)))


def test_skips_at_the_end_of_a_finite_stream_are_reported(tmp_path, capsys):
  good = write_shards(tmp_path, 1, 3)
  bad = tmp_path / "bad.tar"
  bad.write_bytes(b"this is not a tar file" * 40)
  out = read_all(good + [str(bad)])
  assert [r["key"] for r in out] == ["000000000", "000000001", "000000002", ""]
  assert out[-1]["_skips"] == [("bad_shard", str(bad))] and "image" not in out[-1]
  assert cli.main(["data", "convert", f"tar:{{{good[0]},{bad}}}", "--out", str(tmp_path / "ar")]) == 0
  printed = capsys.readouterr().out
  assert "wrote 3 examples in 1 ArrayRecord file(s)" in printed and "(skipped 1)" in printed


@pytest.fixture
def shard_bytes(tmp_path):
  """(the bytes of one 8-sample shard, its captions)."""
  path = write_shards(tmp_path / "src", 1, 8)[0]
  return open(path, "rb").read(), [f"s 0 {j}" for j in range(8)]


def test_http_stream_broken_mid_shard_is_reopened_where_it_broke(shard_bytes, monkeypatch):
  from test_data_helpers import ShardServer
  monkeypatch.setattr(tar_stream, "RETRY_WAIT_S", 0.0, raising=False)
  data, want = shard_bytes
  server = ShardServer({"/a.tar": data})
  try:
    server.cut["/a.tar"] = 2  # two breaks in a row: the first response and the first reopening
    out = read_all([f"{server.url}/a.tar"])
    assert [r["caption"] for r in out] == want and not any(r["_skips"] for r in out)
    starts = [start for _, start in server.requests]
    assert starts == [0, len(data) // 2, len(data) // 2]  # Range requests where it broke, no re-download
  finally:
    server.close()


def test_http_stream_that_keeps_breaking_keeps_the_samples_before_the_break(shard_bytes, monkeypatch):
  from test_data_helpers import ShardServer
  monkeypatch.setattr(tar_stream, "RETRY_WAIT_S", 0.0, raising=False)
  data, want = shard_bytes
  server = ShardServer({"/a.tar": data})
  try:
    server.cut["/a.tar"] = 100
    out = read_all([f"{server.url}/a.tar"])
    assert 0 < len(out) - 1 < 8 and [r["caption"] for r in out[:-1]] == want[:len(out) - 1]
    assert out[-1]["_skips"] == [("truncated_shard", f"{server.url}/a.tar")]
    assert len(server.requests) == 1 + tar_stream.RETRIES
  finally:
    server.close()


def test_http_shard_slower_than_the_timeout_in_total_is_read_whole(shard_bytes, monkeypatch):
  """Only connecting and each read are timed: a shard consumed at training speed is never cut off."""
  import aiohttp.client
  from test_data_helpers import ShardServer
  monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=0.4, sock_connect=5))
  monkeypatch.setattr(tar_stream, "HTTP_TIMEOUT_S", 0.4, raising=False)
  monkeypatch.setattr(tar_stream, "RETRIES", 0, raising=False)  # a cut would show, not be retried away
  data, want = shard_bytes
  server = ShardServer({"/a.tar": data}, chunk_delay=1.2 * 4096 / len(data))  # about 1.2 s in all
  try:
    out = read_all([f"{server.url}/a.tar"])
    assert [r["caption"] for r in out] == want and not any(r["_skips"] for r in out)
  finally:
    server.close()


def test_http_resume_asks_for_the_offset(tmp_path):
  from test_data_helpers import ShardServer
  paths = write_shards(tmp_path, 2, 5)
  server = ShardServer({f"/{i}.tar": open(p, "rb").read() for i, p in enumerate(paths)})
  try:
    ds = tar_stream.TarStream([f"{server.url}/0.tar", f"{server.url}/1.tar"], seed=0, shuffle_shards=False,
                              repeat=False)
    it = iter(ds)
    [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [r["caption"] for r in it]
    it2 = iter(ds)
    it2.set_state(state)
    assert [r["caption"] for r in it2] == rest
    assert server.requests[-2] == ("/0.tar", state["offset"]) and state["offset"] > 0
  finally:
    server.close()


# -- TarSource: the same samples as TarStream, shared descriptors -----------------------------------------------

def test_tar_source_reads_what_tar_stream_reads(tmp_path, caplog):
  import logging
  import tarfile
  from test_data_helpers import jpeg
  members = (sample("./d/a", "first") + sample("./d/b", "   ") + [("./d/c.jpg", jpeg(1)), ("./d/c.txt", b"\xff\xfe")]
             + sample("./d/e", "fifth") + sample("./d/f", "sixth"))
  dot = write_tar(tmp_path / "dot.tar", members)
  with tarfile.open(dot) as tar:
    assert tar.getnames()[0].startswith("./")
  whole = write_tar(tmp_path / "whole.tar", [m for j in range(6) for m in sample(f"w{j}", f"whole {j}", j)])
  data = open(whole, "rb").read()
  (tmp_path / "cut.tar").write_bytes(data[:len(data) // 2 + 100])
  pattern = f"{tmp_path}/{{dot,cut}}.tar"
  with caplog.at_level(logging.WARNING, logger="vlmjax.data.sources"):
    src = tar_source.TarSource(pattern)
  stream = [r for r in read_all(shards.expand_pattern(pattern)) if "image" in r]
  assert [(src[i]["key"], src[i]["caption"], src[i]["image"]) for i in range(len(src))] == [
      (r["key"], r["caption"], r["image"]) for r in stream]
  assert [src[i]["key"] for i in range(3)] == ["a", "e", "f"] and len(src) > 3  # the cut shard keeps its head
  assert src.skipped == {"no_caption": 1, "bad_text": 1, "truncated_shard": 1}
  assert "skipped bad_text 1, no_caption 1, truncated_shard 1" in repr(src)
  assert any("skipped bad_text 1" in r.getMessage() for r in caplog.records)
  src.close()


def test_tar_source_shares_one_descriptor_per_shard_and_closes_it(tmp_path):
  import gc
  import pickle
  from concurrent import futures
  from test_data_helpers import open_fds
  write_shards(tmp_path, 3, 4)
  for _ in range(3):  # as evaluations do: a new source each time, read from a thread pool
    src = tar_source.TarSource(f"{tmp_path}/*.tar")
    with futures.ThreadPoolExecutor(4) as pool:
      assert len(list(pool.map(lambda i: src[i]["image"], range(len(src))))) == 12
    assert len(open_fds(str(tmp_path))) == 3
    del src
    gc.collect()
    assert open_fds(str(tmp_path)) == []
  src = tar_source.TarSource(f"{tmp_path}/*.tar")
  copy = pickle.loads(pickle.dumps(src))
  assert copy[5] == src[5] and len(open_fds(str(tmp_path))) == 2
  src.close()
  copy.close()
  assert open_fds(str(tmp_path)) == []


# -- one-line errors ---------------------------------------------------------------------------------------------

def test_corrupt_arrayrecord_file_is_a_one_line_error_naming_it(tmp_path):
  write_shards(tmp_path / "tars", 1, 2)
  for name, content in (("junk.array_record", b"x" * 70_000), ("tiny.array_record", b"")):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"ArrayRecord file '{path}' is corrupt or not an ArrayRecord") as e:
      sources.open_source(f"arrayrecord:{path}", image_size=16)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("url, package", [("gs://bucket/{00000..00001}.tar", "gcsfs"), ("s3://bucket/a.tar", "s3fs"),
                                          ("gs://bucket/*.tar", "gcsfs")])
def test_cloud_urls_without_their_fsspec_backend_say_what_to_install(url, package):
  import importlib.util
  if importlib.util.find_spec(package):
    pytest.skip(f"{package} is installed")
  with pytest.raises(DataError, match=f"cannot read .*:// URLs here: .*{package}") as e:
    sources.open_source(f"tar:{url}", image_size=16)
  assert "\n" not in str(e.value)
  with pytest.raises(DataError, match=package):
    tar_stream.TarStream([url.replace("{00000..00001}", "0").replace("*", "0")], seed=0)


def test_brace_lists_and_padded_or_descending_ranges(tmp_path):
  write_shards(tmp_path, 4, 1)
  d = str(tmp_path)
  assert shards.expand_pattern(f"{d}/{{00001,00003}}.tar") == [f"{d}/00001.tar", f"{d}/00003.tar"]
  assert shards.expand_pattern(f"{d}/{{00002..00000}}.tar") == [f"{d}/0000{i}.tar" for i in (2, 1, 0)]
  assert shards.expand_pattern(f"{d}/00{{000..3}}.tar") == [f"{d}/0000{i}.tar" for i in range(4)]
  with pytest.raises(DataError, match=r"matches no file \(none of its 4 path\(s\) exists, e.g. '.*/0.tar'\)"):
    shards.expand_pattern(f"{d}/{{0..3}}.tar")
  with pytest.raises(DataError, match="is a directory; name its files"):
    shards.expand_pattern(d)
