"""What the console shows and keeps: progress lines (`progress`), the copy in log.txt (`console.Tee`),
and strict-JSON metric rows (`metrics.strict`)."""

import io
import json
import math
import sys

from vlmjax import console, metrics, progress


class Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_counter_is_quiet_for_short_work_then_prints_rate_and_eta(monkeypatch):
  clock = Clock()
  monkeypatch.setattr(progress.time, "perf_counter", clock)
  out = io.StringIO()
  quick = progress.Counter("quick", total=10, unit="images", stream=out)
  clock.now += 1.0
  quick.update(10)
  quick.close()
  assert out.getvalue() == ""  # done within `quiet` seconds: nothing printed
  bar = progress.Counter("embedding", total=1000, unit="images", every=10, stream=out)
  clock.now += 4.0
  bar.update(100)  # past `quiet`: a line at once
  clock.now += 1.0
  bar.update(100)  # within `every` of the last line: none
  clock.now += 10.0
  bar.update(300)
  clock.now += 5.0
  bar.close()
  assert out.getvalue().splitlines() == [
      "embedding 100/1,000 (25.0 images/s, ETA 0:00:36)",
      "embedding 500/1,000 (33.3 images/s, ETA 0:00:15)",
      "embedding: 500 images in 20.0 s (25.0 images/s)"]


def test_task_says_what_it_does_and_how_it_ended(capsys):
  with progress.Task("compiling the train step"):
    pass
  try:
    with progress.Task("restoring step 4"):
      raise ValueError("x")
  except ValueError:
    pass
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "compiling the train step ..." and lines[1].startswith("compiling the train step: done (")
  assert lines[3].startswith("restoring step 4: failed (")
  assert progress.duration(3725.4) == "1:02:05"


def test_tee_holds_early_lines_then_appends_everything_to_the_log(tmp_path, capsys):
  log = tmp_path / "log.txt"
  log.write_text("an earlier launch\n")
  with console.Tee() as tee:
    assert console.Tee.active() is tee
    print("before the workdir")
    sys.stderr.write("a warning\n")
    tee.attach(str(log), header="vlmjax train ...")
    print("step 1 | loss 2.0")
    print("vlmjax: error: one line", file=sys.stderr)
  assert console.Tee.active() is None
  print("after")  # not copied: the tee is closed
  text = log.read_text()
  assert text.startswith("an earlier launch\n==== ") and "vlmjax train ...\n" in text
  assert text.endswith("before the workdir\na warning\nstep 1 | loss 2.0\nvlmjax: error: one line\n")
  seen = capsys.readouterr()
  assert seen.out == "before the workdir\nstep 1 | loss 2.0\nafter\n" and "a warning" in seen.err  # still shown


def test_metric_rows_are_strict_json():
  row = {"step": 3, "train/loss": math.nan, "train/grad_norm": math.inf, "train/lr": 0.1}
  text = json.dumps(metrics.strict(row))
  back = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
  assert back == {"step": 3, "train/loss": None, "train/grad_norm": None, "train/lr": 0.1,
                  "nonfinite": ["train/loss", "train/grad_norm"]}
  assert metrics.strict({"step": 1, "train/loss": 1.0}) == {"step": 1, "train/loss": 1.0}


def test_writer_times_each_window_and_gives_mfu_where_the_peak_is_known(tmp_path, capsys):
  w = metrics.Writer(str(tmp_path), total_steps=100, batch_size=8, start_step=0,
                     flops_per_step=2e12, peak_flops=8e12)
  first = w.write(1, {"loss": 2.0}, at=10.0, data_seconds=0.5)
  assert "train/step_time" not in first  # the first window holds setup
  row = w.write(11, {"loss": math.nan}, at=15.0, data_seconds=3.0)
  w.close()
  assert row["train/step_time"] == 0.5 and row["train/data_time"] == 0.25 and row["train/samples_per_sec"] == 16
  assert row["train/mfu"] == 2e12 / 0.5 / 8e12
  line = capsys.readouterr().out.splitlines()[-1]
  assert "loss nan" in line and "waiting for data 50%" in line and "MFU 50.0%" in line
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert rows[1]["train/loss"] is None and rows[1]["nonfinite"] == ["train/loss"]
