"""Faults at awkward moments (issue 17): a signal before the first step stops the run at once."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MICRO, ROOT


def _train(workdir, *extra):
  flags = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
  cmd = [sys.executable, "-m", "vlmjax.cli", "train", "--config", "configs/coca_tiny.py:steps=8,evals=0",
         "--workdir", str(workdir), *[f"--config.{k}={v}" for k, v in MICRO], "--config.ckpt_every=2", *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_compiling_stops_at_once_and_keeps_the_checkpoints(tmp_path, sig, code):
  workdir = tmp_path / "run"
  first = _train(workdir)  # 8 steps, checkpoints at 2, 4, 6, 8
  first.wait(timeout=300)
  assert first.returncode == 0, first.stderr.read()
  kept = sorted(os.listdir(workdir / "checkpoints"))
  proc = _train(workdir, "--config.total_steps=12", "--config.optim.warmup_steps=2")  # resumes from step 8
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


def test_a_second_run_on_a_workdir_is_refused_naming_the_holder_until_it_dies(tmp_path, capsys):
  from vlmjax import cli
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vlmjax import workdir; "
                             "lock = workdir.Lock(sys.argv[1]); print('held', flush=True); time.sleep(120)",
                             str(workdir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    argv = ["train", "--config", os.path.join(ROOT, "configs/coca_tiny.py:steps=2,evals=0"), "--workdir",
            str(workdir), *[f"--config.{k}={v}" for k, v in MICRO], "--config.optim.warmup_steps=1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is in use by another run (pid {holder.pid} on " in err[0], err
    assert sorted(os.listdir(workdir)) == ["lock.json"]  # nothing written
  finally:
    holder.kill()  # as kill -9: the kernel drops its lock
    holder.wait()
  assert cli.main(argv) == 0
  assert os.listdir(workdir / "checkpoints") == ["2"]
