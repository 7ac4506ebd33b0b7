"""Bad data at awkward moments (issue 17): shards whose tar entries are all valid but whose images are
all undecodable stop the run with one line naming the shards, within seconds, and a signal is answered
while the pipeline waits for a batch that never comes."""

import os
import signal
import threading
import time

import pytest

from conftest import MICRO, ROOT
from test_data_helpers import data_cfg, jpeg, single_device, write_tar
from vlmjax.data import batcher, pipeline
from vlmjax.errors import DataError

WITHIN_S = 20  # generous for a loaded machine; the error comes in well under a second here


def undecodable_shards(directory, num_shards: int, per_shard: int = 8, prefix: str = "bad") -> list[str]:
  """Valid tar entries KEY.jpg (garbage bytes) + KEY.txt (a caption): every member parses, no image decodes."""
  directory.mkdir(parents=True, exist_ok=True)
  return [write_tar(directory / f"{prefix}{s:05d}.tar",
                    [m for j in range(per_shard)
                     for m in ((f"{s:05d}{j:04d}.jpg", b"\xff\xd8 not a jpeg %d" % j),
                               (f"{s:05d}{j:04d}.txt", f"caption {s} {j}".encode()))])
          for s in range(num_shards)]


def build(cfg, batch=8):
  return pipeline.build(cfg, global_batch=batch, seed=0, image_size=16, context_length=24, vocab_size=259,
                        sharding=single_device())


def first_batch_error(it) -> BaseException | None:
  """What next(it) raises, waited on in a helper thread: a regression fails the test instead of hanging it."""
  box = {}

  def run():
    try:
      next(it)
    except BaseException as e:  # noqa: BLE001 -- handed to the test
      box["error"] = e
  worker = threading.Thread(target=run, daemon=True)
  worker.start()
  worker.join(WITHIN_S)
  if worker.is_alive():
    pytest.fail(f"no batch and no error after {WITHIN_S} s: the pipeline hangs")
  it.close()
  return box.get("error")


def assert_one_line_naming(error, shards):
  assert isinstance(error, DataError), repr(error)
  assert "\n" not in str(error)
  assert "bad_image" in str(error), str(error)
  for shard in shards:
    assert shard in str(error), str(error)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_undecodable_images_in_valid_tars_stop_with_one_line_naming_the_shards(tmp_path, num_shards):
  shards = undecodable_shards(tmp_path / "t", num_shards)
  start = time.monotonic()
  error = first_batch_error(build(data_cfg(f"tar:{tmp_path}/t/*.tar")))
  assert_one_line_naming(error, shards)
  assert "more than max_skip_fraction=0.1" in str(error)
  assert time.monotonic() - start < WITHIN_S


def test_a_mixture_of_undecodable_sources_stops_naming_both(tmp_path):
  a = undecodable_shards(tmp_path / "a", 1, prefix="a")
  b = undecodable_shards(tmp_path / "b", 1, prefix="b")
  source = str({f"tar:{tmp_path}/a/*.tar": 1, f"tar:{tmp_path}/b/*.tar": 1})
  assert_one_line_naming(first_batch_error(build(data_cfg(source))), a + b)


def test_a_mixture_mostly_of_undecodable_images_stops_naming_the_bad_shard(tmp_path):
  bad = undecodable_shards(tmp_path / "bad", 1)
  good = tmp_path / "good"
  good.mkdir()
  write_tar(good / "00000.tar", [m for j in range(8) for m in ((f"g{j}.jpg", jpeg(j)), (f"g{j}.txt", b"fine"))])
  source = str({f"tar:{bad[0]}": 9, f"tar:{good}/*.tar": 1})
  it = build(data_cfg(source))
  box = {}

  def run():
    try:
      for _ in range(1000):
        next(it)
    except BaseException as e:  # noqa: BLE001
      box["error"] = e
  worker = threading.Thread(target=run, daemon=True)
  worker.start()
  worker.join(WITHIN_S)
  assert not worker.is_alive(), "the pipeline hangs"
  it.close()
  assert_one_line_naming(box.get("error"), bad)
  assert str(good) not in str(box["error"])


def test_undecodable_images_in_arrayrecord_files_stop_naming_the_file(tmp_path):
  from vlmjax.data import records
  paths = records.write_arrayrecord(({"key": f"k{i}", "image": b"garbage %d" % i, "caption": "a caption"}
                                     for i in range(20)), str(tmp_path / "ar"))
  error = first_batch_error(build(data_cfg(f"arrayrecord:{tmp_path}/ar/*.array_record")))
  assert_one_line_naming(error, paths)


def test_with_max_skip_fraction_1_a_stream_that_cannot_fill_a_batch_still_stops(tmp_path, monkeypatch):
  monkeypatch.setattr(batcher, "MAX_SKIPS_IN_A_ROW", 500)
  shards = undecodable_shards(tmp_path / "t", 2)
  error = first_batch_error(build(data_cfg(f"tar:{tmp_path}/t/*.tar", max_skip_fraction=1.0)))
  assert_one_line_naming(error, shards)
  assert "samples in a row: no batch can be filled" in str(error)


def test_a_signal_is_answered_while_waiting_for_a_batch_and_closing_is_prompt(tmp_path, monkeypatch):
  """The wait for a batch that never comes (max_skip_fraction=1, no stall limit) is interrupted by
  SIGTERM inside the train loop's `interruptible()`, and closing the pipeline does not wait on it."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signals are handled in the main thread")
  from vlmjax.preemption import Preempted, PreemptionWatcher
  monkeypatch.setattr(batcher, "MAX_SKIPS_IN_A_ROW", 10 ** 12)
  undecodable_shards(tmp_path / "t", 2)
  it = build(data_cfg(f"tar:{tmp_path}/t/*.tar", max_skip_fraction=1.0))
  watcher = PreemptionWatcher()
  guard = threading.Timer(WITHIN_S, lambda: os.kill(os.getpid(), signal.SIGINT))  # a regression: KeyboardInterrupt
  timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
  try:
    start = time.monotonic()
    timer.start()
    guard.start()
    with pytest.raises(Preempted):
      with watcher.interruptible():
        next(it)
    assert time.monotonic() - start < 5, "the signal was not answered within seconds"
    start = time.monotonic()
    it.close()  # stops the prefetch thread in the middle of a batch that can never be filled
    assert time.monotonic() - start < 5
  finally:
    guard.cancel()
    timer.cancel()
    watcher.close()
  assert it.stats()["data/samples"] == 0


def test_train_stops_with_one_line_and_exit_2(tmp_path, capsys):
  """End to end, in process: `vlmjax train` on such shards prints one line naming them and exits 2."""
  from vlmjax import cli
  shards = undecodable_shards(tmp_path / "t", 2)
  argv = ["train", "--config", os.path.join(ROOT, "configs/coca_tiny.py:steps=2,evals=0"), "--workdir",
          str(tmp_path / "run"), *[f"--config.{k}={v}" for k, v in MICRO], "--config.optim.warmup_steps=1",
          f"--config.data.train.source=tar:{tmp_path}/t/*.tar"]
  box = {}
  worker = threading.Thread(target=lambda: box.update(code=cli.main(argv)), daemon=True)
  worker.start()
  worker.join(120)
  assert not worker.is_alive(), "vlmjax train hangs"
  assert box["code"] == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "bad_image" in err[0] and all(s in err[0] for s in shards), err
