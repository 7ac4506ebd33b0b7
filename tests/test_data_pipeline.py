"""The pipeline: mixing weights, per-host splits, exact resume, and bad input skipped and counted."""

import json
import logging

import jax
import numpy as np
import pytest

from test_data_helpers import captions, data_cfg, jpeg, sample, single_device, write_shards, write_tar
from vlmjax.data import pipeline, sources
from vlmjax.errors import DataError


def build(cfg, batch=8, seed=0, **kw):
  return pipeline.build(cfg, global_batch=batch, seed=seed, image_size=16, context_length=24, vocab_size=259,
                        sharding=single_device(), **kw)


def take(it, n):
  return [jax.device_get(next(it)) for _ in range(n)]


def test_mixing_weights_are_respected(tmp_path):
  write_shards(tmp_path / "a", 2, 20, prefix="a")
  write_shards(tmp_path / "b", 2, 20, prefix="b")
  source = str({f"tar:{tmp_path}/a/*.tar": 3, f"tar:{tmp_path}/b/*.tar": 1})  # the string form configs use
  it = build(data_cfg(source), batch=16)
  names = [c.split()[0] for b in take(it, 25) for c in captions(b)]
  frac = names.count("a") / len(names)  # 400 draws: 3 sigma of a Bernoulli(0.75) is 0.065
  assert abs(frac - 0.75) < 0.065 and set(names) == {"a", "b"}
  it.close()


@pytest.mark.parametrize("kind", ["tar", "arrayrecord"])
def test_two_hosts_read_disjoint_and_complete_shares(tmp_path, kind):
  write_shards(tmp_path / "tars", 4, 6)
  spec = f"tar:{tmp_path}/tars/*.tar"
  if kind == "arrayrecord":
    from vlmjax import cli
    assert cli.main(["data", "convert", spec, "--out", str(tmp_path / "ar"), "--per-file", "5"]) == 0
    spec = f"arrayrecord:{tmp_path}/ar/*.array_record"
  seen = []
  for host in (0, 1):  # global batch 8 -> 4 per host; one epoch is 12 samples per host
    it = build(data_cfg(spec), batch=8, process_index=host, process_count=2)
    seen.append([c for b in take(it, 3) for c in captions(b)])
    it.close()
  everything = {f"s {s} {j}" for s in range(4) for j in range(6)}
  assert len(seen[0]) == len(set(seen[0])) == 12 and not set(seen[0]) & set(seen[1])
  assert set(seen[0]) | set(seen[1]) == everything


def _resume_matches(cfg, steps_before, steps_after, batch=8):
  it = build(cfg, batch=batch)
  take(it, steps_before)
  state = json.loads(json.dumps(it.get_state()))  # as the orbax JSON checkpoint stores it
  stats = it.stats()
  want = take(it, steps_after)
  want_stats = it.stats()
  it.close()
  resumed = build(cfg, batch=batch)
  resumed.set_state(state)
  assert resumed.stats() == stats
  for w, g in zip(want, take(resumed, steps_after)):
    np.testing.assert_array_equal(g["text"], w["text"])
    np.testing.assert_array_equal(g["image"], w["image"])
  assert resumed.stats() == want_stats
  resumed.close()
  return want_stats


def test_tar_stream_resumes_exactly_with_shuffle_buffer_crops_and_bad_samples(tmp_path):
  paths = write_shards(tmp_path / "tars", 3, 7)
  write_tar(tmp_path / "tars" / "00003.tar", sample("x1", "fine", 9) + [("x2.jpg", b"garbage")] + sample("x3", "ok", 5))
  cfg = data_cfg(f"tar:{tmp_path}/tars/*.tar", shuffle_buffer=5, image_mode="random_resized_crop",
                 crop_min_scale=0.3, max_skip_fraction=0.5)
  # 24 samples a pass: batches 2..7 cross epoch boundaries and shuffle windows.
  stats = _resume_matches(cfg, 2, 5)
  assert stats["data/skipped/no_caption"] >= 1 and len(paths) == 3


def test_random_access_resumes_exactly(tmp_path):
  stats = _resume_matches(data_cfg("synthetic:shapes", image_mode="random_resized_crop"), 3, 3)
  assert stats["data/skipped"] == 0 and stats["data/samples"] > 0


def test_bad_input_is_skipped_and_counted(tmp_path, caplog):
  d = tmp_path / "bad"
  d.mkdir()
  good = lambda s: [m for j in range(6) for m in sample(f"g{s}{j}", f"good {s} {j}", j)]
  write_tar(d / "00000.tar", good(0) + sample("c1", "corrupt", 1)[1:] + [("c1.jpg", b"\xff\xd8garbage")]
            + [("t1.jpg", jpeg(3)[:-40]), ("t1.txt", b"truncated jpeg")]
            + [("n1.jpg", jpeg(4))]                                   # no caption
            + [("e1.jpg", jpeg(4)), ("e1.txt", b"   ")]                # empty caption
            + [("u1.jpg", jpeg(5)), ("u1.txt", b"caf\xe9 \xff")]       # not UTF-8
            + [("i1.txt", b"caption without image")])
  (d / "00001.tar").write_bytes(b"")                                   # empty tar
  write_tar(d / "00002.tar", good(2))
  whole = (d / "00002.tar").read_bytes()
  (d / "00003.tar").write_bytes(whole[:len(whole) // 2 + 100])         # truncated tar
  write_tar(d / "00004.tar", good(4))                                  # 00005.tar is missing
  (d / "00006.tar").write_bytes(b"this is not a tar file" * 40)        # corrupt tar
  cfg = data_cfg(f"tar:{d}/{{00000..00006}}.tar", max_skip_fraction=0.9)
  with caplog.at_level(logging.WARNING, logger="vlmjax.data.batcher"):
    it = build(cfg, batch=4)
    batches = take(it, 12)  # 48 samples: two passes over the ~21 readable ones
  stats = it.stats()
  it.close()
  for reason in ("bad_image", "no_caption", "bad_text", "no_image", "empty_shard", "truncated_shard",
                 "missing_shard", "bad_shard"):
    assert stats[f"data/skipped/{reason}"] >= 1, reason
  assert stats["data/skipped/bad_image"] >= 2 and stats["data/skipped/no_caption"] >= 2
  assert stats["data/samples"] == 48 and stats["data/skipped"] == sum(
      v for k, v in stats.items() if k.startswith("data/skipped/"))
  assert all(c.startswith("good") for b in batches for c in captions(b))
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "skipped" in warnings[0].getMessage()  # rate-limited


def test_unreachable_url_is_skipped(tmp_path):
  from vlmjax.data import tar_stream
  good = write_shards(tmp_path / "tars", 2, 3)
  ds = tar_stream.TarStream([good[0], "http://127.0.0.1:9/00000.tar", good[1]], seed=0, shuffle_shards=False,
                            repeat=False)
  out = list(ds)
  assert [r["caption"] for r in out] == [f"s {s} {j}" for s in range(2) for j in range(3)]
  assert out[3]["_skips"] == [("unreachable", "http://127.0.0.1:9/00000.tar")]


def test_too_many_skips_stop_the_run_naming_the_worst_shards(tmp_path):
  d = tmp_path / "t"
  d.mkdir()
  write_tar(d / "00000.tar", [m for j in range(100) for m in sample(f"a{j}", f"c {j}")])
  write_tar(d / "00001.tar", [m for j in range(150) for m in (("b%d.jpg" % j, b"junk"), ("b%d.txt" % j, b"x"))])
  it = build(data_cfg(f"tar:{d}/*.tar", max_skip_fraction=0.2), batch=8)
  with pytest.raises(DataError, match=r"max_skip_fraction=0.2; worst shards: .*00001.tar \(\d+\)"):
    take(it, 40)
  it.close()


def test_no_readable_shard_is_an_error_not_a_hang(tmp_path):
  (tmp_path / "00000.tar").write_bytes(b"")
  (tmp_path / "00001.tar").write_bytes(b"junk" * 300)
  it = build(data_cfg(f"tar:{tmp_path}/*.tar"), batch=4)
  with pytest.raises(DataError, match="no readable sample in the 2 tar shard"):
    next(it)
  it.close()


def test_config_errors_are_immediate(tmp_path):
  with pytest.raises(DataError, match="matches no file"):
    build(data_cfg(f"tar:{tmp_path}/*.tar"))
  write_shards(tmp_path / "one", 1, 2)
  with pytest.raises(DataError, match="1 tar shard.*cannot be split over 2 hosts"):
    build(data_cfg(f"tar:{tmp_path}/one/*.tar"), process_index=0, process_count=2)
  with pytest.raises(DataError, match="must be a positive number"):
    build(data_cfg("{'synthetic:shapes': 0}"))


def test_an_image_with_several_captions_trains_on_each_of_them(tmp_path):
  from vlmjax.data import records, transforms
  png = transforms.encode_png(np.zeros((16, 16, 3), np.uint8))
  records.write_arrayrecord([{"key": "k", "image": png, "caption": "one", "captions": ["one", "two", "three"]}],
                            str(tmp_path))
  it = build(data_cfg(f"arrayrecord:{tmp_path}/*.array_record"), batch=8)
  seen = [c for b in take(it, 4) for c in captions(b)]  # the one record, 32 visits
  it.close()
  assert set(seen) == {"one", "two", "three"}, seen
  again = build(data_cfg(f"arrayrecord:{tmp_path}/*.array_record"), batch=8)
  assert [c for b in take(again, 4) for c in captions(b)] == seen  # drawn from the seed: reproducible
  again.close()


def test_runs_with_nearby_seeds_share_no_epoch(tmp_path):
  from vlmjax.data import records
  png = transforms_png()
  records.write_arrayrecord([{"key": f"k{i:02d}", "image": png, "caption": f"c {i}"} for i in range(12)],
                            str(tmp_path))
  spec = f"arrayrecord:{tmp_path}/*.array_record"

  def keys(seed, n):
    c = data_cfg(spec)
    it = iter(sources.open_source(spec, mode="stream", image_size=16, seed=seed, shuffle_buffer=c.shuffle_buffer,
                                  num_threads=c.num_threads))
    out = [next(it)["key"] for _ in range(n)]
    it.close()
    return out
  s0, s1 = keys(0, 24), keys(1, 12)
  assert sorted(s0[:12]) == sorted(s0[12:]) == sorted(s1) == [f"k{i:02d}" for i in range(12)]
  assert s0[12:] != s1 and s0[:12] != s0[12:] and s0 == keys(0, 24)


def transforms_png(size=16, seed=0):
  from vlmjax.data import transforms
  return transforms.encode_png((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def test_hosts_draw_different_crops_of_the_same_image():
  import grain
  from vlmjax.data import batcher, tokenizers, transforms
  rec = {"key": "k", "image": transforms_png(32), "caption": "c", "_shard": "x"}

  def first_batch(host):
    ds = batcher.DecodeBatch(grain.MapDataset.source([rec] * 4).to_iter_dataset(), batch_size=4,
                             decoder=transforms.ImageDecoder(16, "random_resized_crop", 0.2),
                             tokenizer=tokenizers.ByteTokenizer(), context_length=8, seed=0, num_threads=1,
                             max_skip_fraction=0.5, host_index=host)
    it = iter(ds)
    out = next(it)["image"]
    it.close()
    return out
  host0 = first_batch(0)
  np.testing.assert_array_equal(host0, first_batch(0))
  assert not np.array_equal(host0, first_batch(1))


def test_close_stops_every_thread_and_closes_the_shards(tmp_path):
  import threading
  from test_data_helpers import open_fds
  write_shards(tmp_path / "t", 2, 6)
  before = set(threading.enumerate())
  it = build(data_cfg(f"tar:{tmp_path}/t/*.tar", shuffle_buffer=4), batch=4)
  take(it, 1)
  it.close()
  assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
  assert open_fds(str(tmp_path)) == []
  assert it.stats()["data/samples"] >= 4  # the counters still answer
  with pytest.raises(ValueError, match="closed"):
    next(it)


def test_an_iterator_left_open_at_exit_is_closed_quietly(tmp_path):
  import os
  import subprocess
  import sys
  write_shards(tmp_path / "t", 2, 6)
  tests = os.path.dirname(os.path.abspath(__file__))
  code = (f"import sys; sys.path.insert(0, {tests!r})\n"
          "from test_data_helpers import data_cfg, single_device\n"
          "from vlmjax.data import pipeline\n"
          f"it = pipeline.build(data_cfg('tar:{tmp_path}/t/*.tar'), global_batch=4, seed=0, image_size=16,"
          " context_length=24, vocab_size=259, sharding=single_device())\n"
          "next(it)\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
