import json
import os
import subprocess
import sys
import time

from conftest import MICRO, ROOT


def _run(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "vlmjax.cli", *args], capture_output=True, text=True,
                        cwd=ROOT, env=env)


def test_synth_then_train_on_tar_shards_then_finished(tmp_path):
  data, workdir = tmp_path / "shapes", tmp_path / "run"
  proc = _run("data", "synth", "--out", str(data), "--num-shards", "2", "--samples-per-shard", "40")
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(data)) == ["00000.tar", "00001.tar"]
  overrides = [f"--config.{k}={v}" for k, v in MICRO] + [
      f"--config.data.train.source=tar:{data}/{{00000..00001}}.tar", "--config.log_every=2",
      "--config.ckpt_every=4"] + [  # the demo's evaluators, on a few examples
      f"--config.evals.{k}={v}" for k, v in (
          ("zero_shot.num_examples", 32), ("zero_shot.batch_size", 16), ("retrieval.num_examples", 32),
          ("retrieval.batch_size", 16), ("captioning.num_examples", 4), ("captioning.batch_size", 4),
          ("captioning.max_len", 6))]
  proc = _run("train", "--config", "configs/coca_tiny.py:steps=4", "--workdir", str(workdir), *overrides)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert [line for line in lines if line.endswith(" ...")] == [  # what the first seconds are spent on
      "building the model and tracing the train step ...", "preparing the evaluators (captioning, retrieval, "
      "zero_shot) ...", "initialising the parameters ...", "compiling the train step ..."]
  steps = [line for line in lines if line.startswith("step ")]
  assert steps[0].startswith("step      1/4 | loss ") and "ETA" in steps[1] and "samples/s" in steps[1]
  assert lines[-1].startswith("done: steps 0->4")
  evals = [line for line in lines if line.startswith("eval        4/4 | ")]
  assert len(evals) == 3 and any(line.startswith("eval        4/4 | zero_shot: top1 ") for line in evals)
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 4, 4]
  assert {"eval/zero_shot/top5", "eval/retrieval/i2t_r1", "eval/captioning/cider"} <= set(rows[-1])
  at4 = json.load(open(workdir / "eval" / "4.json"))  # one home: the evaluation's file, its captions kept
  assert at4["step"] == 4 and at4["eval/retrieval/i2t_r1"] == rows[-1]["eval/retrieval/i2t_r1"]
  assert not [k for r in rows for k in r if "@" in k]  # TensorBoard keeps every name as it is
  captions = [json.loads(line) for line in open(workdir / "eval" / "4" / "captions.jsonl")]
  assert [(c["eval"], c["index"]) for c in captions] == [("captioning", i) for i in range(4)]
  assert all(isinstance(c["caption"], str) and c["references"] for c in captions)
  assert {"train/loss", "train/caption_loss", "train/contrastive_loss", "train/lr"} <= set(rows[0])
  assert {"train/samples_per_sec", "train/step_time", "train/data_time"} <= set(rows[1])
  assert "train/mfu" not in rows[1]  # no known peak on CPU
  assert [r.get("data/samples") for r in rows] == [16 * 1, 16 * 2, 16 * 4, None]  # the step's own batches
  log = (workdir / "log.txt").read_text()
  assert log.startswith("==== ") and all(line in log for line in lines)
  launch, = json.load(open(workdir / "run.json"))["launches"]
  assert "train" in launch["argv"] and launch["device_count"] >= 1 and launch["process_count"] == 1
  assert launch["versions"]["jax"] and launch["resumed_from_step"] == 0 and "start_time" in launch
  assert json.load(open(workdir / "config.json"))["total_steps"] == 4
  assert os.listdir(workdir / "tb") and os.listdir(workdir / "checkpoints") == ["4"]
  again = _run("train", "--config", "configs/coca_tiny.py:steps=4", "--workdir", str(workdir), *overrides)
  assert again.returncode == 0 and "already finished at step 4" in again.stdout
  assert [x["resumed_from_step"] for x in json.load(open(workdir / "run.json"))["launches"]] == [0, 4]
  assert (workdir / "log.txt").read_text().count("\n==== ") == 1 and "already finished" in (workdir / "log.txt").read_text()


def test_a_failed_checkpoint_save_stops_the_run_with_one_line_soon(tmp_path):
  """A file where the checkpoint folder goes: the first save fails in the background; the run
  stops at the next save with one `vlmjax: error:` line, without waiting out orbax's timeouts."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a folder")
  overrides = [f"--config.{k}={v}" for k, v in MICRO] + [
      "--config.data.train.source=synthetic:shapes", "--config.ckpt_every=2", "--config.log_every=1"]
  start = time.time()
  proc = _run("train", "--config", "configs/coca_tiny.py:steps=6,evals=0", "--workdir", str(workdir), *overrides)
  assert proc.returncode == 1, proc.stderr[-2000:]
  ours = [line for line in proc.stderr.splitlines() if line.startswith("vlmjax: error: checkpoint")]
  assert len(ours) == 1 and "failed: NotADirectoryError" in ours[0], proc.stderr[-2000:]
  assert time.time() - start < 150  # not orbax's 300 s signal timeouts
  assert "step      6/6" not in proc.stdout  # stopped at the save after the failed one


def test_a_runs_config_json_relaunches_it_as_it_was(tmp_path, capsys):
  """`vlmjax train --config RUN/config.json` trains what RUN trained: same resolved config, same
  losses; a JSON that is not a run's config is one line."""
  from vlmjax import cli
  first, again = tmp_path / "first", tmp_path / "again"
  overrides = [f"--config.{k}={v}" for k, v in MICRO] + ["--config.log_every=1"]
  assert cli.main(["train", "--config", os.path.join(ROOT, "configs/coca_tiny.py:steps=3,evals=0"), "--workdir", str(first),
                   *overrides]) == 0
  assert cli.main(["train", "--config", str(first / "config.json"), "--workdir", str(again)]) == 0
  assert (first / "config.json").read_text() == (again / "config.json").read_text()
  losses = [[json.loads(line)["train/loss"] for line in open(w / "metrics.jsonl")] for w in (first, again)]
  assert losses[0] == losses[1] and len(losses[0]) == 3
  (tmp_path / "other.json").write_text('{"a": 1}')
  capsys.readouterr()
  assert cli.main(["train", "--config", str(tmp_path / "other.json"), "--workdir", str(tmp_path / "x")]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"vlmjax: error: {tmp_path / 'other.json'} is not a vlmjax config.json (a run's resolved config, with a 'model' group)"]
