"""Faults at awkward moments (issue 17): a signal before the first step stops the run at once."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import MICRO, ROOT


SPEC = "configs/coca_tiny.py:steps=12,evals=0"
COMMON = tuple(MICRO) + (("ckpt_every", "2"), ("log_every", "1"))


def _losses(workdir) -> list:
  import json
  return [json.loads(line)["train/loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The losses of one uninterrupted 12-step run, which every resumed fault run must equal bitwise."""
  from vlmjax import config, train
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  train.train(config.load(os.path.join(ROOT, SPEC), COMMON), workdir)
  return _losses(workdir)


@pytest.fixture(scope="module")
def stopped_at_8(tmp_path_factory):
  """The same run stopped after step 8 (its checkpoint saved); tests resume copies of it."""
  from vlmjax import config, train
  workdir = str(tmp_path_factory.mktemp("stopped") / "run")
  train.train(config.load(os.path.join(ROOT, SPEC), COMMON), workdir, stop_after=8)
  return workdir


def _resume(workdir) -> list:
  """The run resumed to its end, in-process; its losses, one per step."""
  from vlmjax import config, train
  assert train.train(config.load(os.path.join(ROOT, SPEC), COMMON), str(workdir))["finished"]
  return _losses(workdir)


def _train(workdir):
  """`vlmjax train` of the same run in a subprocess (the test process's 8 CPU devices, same flags)."""
  cmd = [sys.executable, "-m", "vlmjax.cli", "train", "--config", SPEC, "--workdir", str(workdir),
         *[f"--config.{k}={v}" for k, v in COMMON]]
  return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_compiling_stops_at_once_and_keeps_the_checkpoints(tmp_path, sig, code, reference,
                                                                        stopped_at_8):
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_8, workdir)
  kept = sorted(os.listdir(workdir / "checkpoints"))
  proc = _train(workdir)  # resumes from step 8
  lines = []
  deadline = time.time() + 120
  while time.time() < deadline:
    line = proc.stdout.readline()
    lines.append(line)
    if line.startswith("compiling the train step ...") or not line:
      break
  assert lines[-1].startswith("compiling the train step ..."), "".join(lines) + proc.stderr.read()
  proc.send_signal(sig)
  start = time.time()
  out, err = proc.communicate(timeout=60)
  assert time.time() - start < 10, "the signal was not answered within seconds"
  assert proc.returncode == code, err
  why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else "preempted"
  assert f"{why} before the first step: stopped; nothing new to save" in out and "Traceback" not in err, (out, err)
  assert sorted(os.listdir(workdir / "checkpoints")) == kept  # nothing lost, nothing half-written
  assert _resume(workdir) == reference


def test_an_update_that_makes_parameters_non_finite_is_never_kept_or_saved(micro_cfg, tmp_path):
  """lr 1e39 overflows float32: the loss and gradient of step 1 are finite, its updated parameters
  are not. The step is dropped and halts the run at once (formerly: accepted, saved, halted a step
  later with the poisoned parameters in the checkpoint)."""
  from vlmjax import train
  cfg = micro_cfg(("optim.lr", "1e39"), ("optim.warmup_steps", "0"), ("ckpt_every", "1"), ("log_every", "1"),
                  ("nan_policy", "halt"), spec="configs/coca_tiny.py:steps=4,evals=0")
  with pytest.raises(train.TrainingHalted, match="updated parameters at step 1 "):
    train.train(cfg, str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run" / "checkpoints") == []


def test_a_second_run_on_a_workdir_is_refused_naming_the_holder_until_it_dies(tmp_path, capsys, reference,
                                                                           stopped_at_8):
  from vlmjax import cli
  workdir = tmp_path / "run"
  shutil.copytree(stopped_at_8, workdir)
  kept = sorted(os.listdir(workdir / "checkpoints"))
  before = sorted(os.listdir(workdir))
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vlmjax import workdir; "
                             "lock = workdir.Lock(sys.argv[1]); print('held', flush=True); time.sleep(120)",
                             str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    capsys.readouterr()
    argv = ["train", "--config", os.path.join(ROOT, SPEC), "--workdir", str(workdir),
            *[f"--config.{k}={v}" for k, v in COMMON]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in use by another run (pid {holder.pid} on " in err[0], err
    assert sorted(os.listdir(workdir)) == before and sorted(os.listdir(workdir / "checkpoints")) == kept
  finally:
    holder.kill()  # as kill -9: the kernel drops its lock
    holder.wait()
  assert cli.main(argv) == 0  # the dead holder's lock is free at once
  assert _losses(workdir) == reference


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_whole_checkpoint(tmp_path, reference):
  """A 10 MiB tmpfs fills up during one of the saves (checkpoints are about 3.5 MiB; which save fails
  varies with orbax's layout): one line, exit 1, and the checkpoints before it whole and resumable."""
  import shutil
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(disk)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (not root)")
  try:
    proc = _train(disk / "run")
    out, err = proc.communicate(timeout=300)
    ours = [line for line in err.splitlines() if line.startswith("vlmjax:")]
    assert proc.returncode == 1 and len(ours) == 1 and ours[0].startswith("vlmjax: error: checkpoint "), (proc.returncode, ours, [l for l in err.splitlines() if not l.startswith(" ")][-15:])
    assert "the last whole checkpoint is kept" in ours[0]
    names = os.listdir(disk / "run" / "checkpoints")
    assert any(n.endswith(".orbax-checkpoint-tmp") for n in names), names  # the save that failed, never used

    shutil.copytree(disk / "run", tmp_path / "moved", ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
  finally:
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)
  assert _resume(tmp_path / "moved") == reference  # resumed elsewhere from the last whole one: as if nothing happened


def test_sigterm_while_waiting_for_a_batch_saves_the_last_step_and_resumes_exactly(tmp_path, monkeypatch, capsys,
                                                                                   reference):
  """The batch of step 6 never comes (a stalled store): SIGTERM stops the wait at once, step 5 (not a
  checkpoint step) is saved at the data's position before the wait, and the resumed run equals the
  uninterrupted one bitwise."""
  import threading
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signals are handled in the main thread")
  from vlmjax import config, train
  from vlmjax.data import pipeline
  workdir = tmp_path / "run"
  train.train(config.load(os.path.join(ROOT, SPEC), COMMON), str(workdir), stop_after=4)
  build = pipeline.build

  class Stalls:
    """The real batches, except that the second fetch waits up to 60 s (for a signal)."""

    def __init__(self, batches):
      self.batches, self.fetched = batches, 0

    def __next__(self):
      self.fetched += 1
      if self.fetched == 2:
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        for _ in range(600):
          time.sleep(0.1)
      return next(self.batches)

    def __getattr__(self, name):
      return getattr(self.batches, name)

  monkeypatch.setattr(pipeline, "build", lambda *a, **k: Stalls(build(*a, **k)))
  capsys.readouterr()
  start = time.monotonic()
  summary = train.train(config.load(os.path.join(ROOT, SPEC), COMMON), str(workdir))
  assert time.monotonic() - start < 60, "the signal was not answered while waiting"
  assert summary["preempted"] and not summary["finished"]
  assert "preempted while waiting for data: saved step 5" in capsys.readouterr().out
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4", "5"]
  monkeypatch.setattr(pipeline, "build", build)
  assert _resume(workdir) == reference
