"""Multi-process runs, preemption, kill -9 and NaN policies (issue: multi-host and fault tolerance)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import checkpoint, config, distributed, optim, train, train_state

from conftest import MICRO, ROOT, restore_state


def _env(devices):
  flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")


def _cli(*args):
  return [sys.executable, "-m", "vlmjax.cli", *args]


def _overrides(*extra):
  return [f"--config.{k}={v}" for k, v in MICRO + tuple(extra)]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    # as strict readers (JSON.parse) do: NaN and Infinity are not JSON
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}")) for line in f]


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in _rows(workdir)}


def test_launch_local_two_processes_equals_one_process(tmp_path):
  """2 processes x 2 CPU devices (collectives over 127.0.0.1) give one 4-device process's losses."""
  train_args = ["train", "--config", "configs/coca_tiny.py:steps=3,evals=0"] + _overrides(("log_every", "1"))
  multi = subprocess.Popen(_cli("launch", "local", "-n", "2", "--devices-per-process", "2",
                                "--logs", str(tmp_path / "logs"), "--", *train_args,
                                "--workdir", str(tmp_path / "multi")),
                           cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  single = subprocess.run(_cli(*train_args, "--workdir", str(tmp_path / "single")), cwd=ROOT, env=_env(4),
                          capture_output=True, text=True)
  out, _ = multi.communicate(timeout=600)
  assert single.returncode == 0, single.stderr
  assert multi.returncode == 0, out + open(tmp_path / "logs" / "1.log").read()
  a, b = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert sorted(a) == sorted(b) == [1, 2, 3]
  # Each host reads every other example of the same global order: the same batch, permuted.
  np.testing.assert_allclose([b[k] for k in a], list(a.values()), rtol=2e-5)
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3"]
  # Each host's own data position is in the checkpoint (each reads its own part of the data).
  import orbax.checkpoint as ocp
  cfg = config.load(os.path.join(ROOT, "configs/coca_tiny.py:steps=3,evals=0"), MICRO)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "multi" / "checkpoints"), cfg)
  data = ckpt.manager.restore(3, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
  ckpt.close()
  assert len(data["per_process"]) == 2 and all("parent" in d for d in data["per_process"]), data
  assert checkpoint.own_data_state({"per_process": data["per_process"][:1]}, 3) == data["per_process"][0]
  with pytest.raises(config.ConfigError, match="saved by 2 processes; this run has 1"):
    checkpoint.own_data_state(data, 3)


def test_two_processes_evaluate_a_checkpoint_as_one_does(micro_cfg, tmp_path):
  """`vlmjax launch local -n 2 -- eval`: each host reads its rows; the metrics equal one process's."""
  from vlmjax.evals import commands
  workdir = str(tmp_path / "run")
  train.train(micro_cfg(("total_steps", "3"), ("ckpt_every", "3")), workdir)
  evaluator = ["--config.evals.zs=zero_shot:synthetic:shapes:test", "--config.evals.zs.num_examples=40",
               "--config.evals.zs.batch_size=16", "--config.evals.zs.templates=shapes"]
  proc = subprocess.run(_cli("launch", "local", "-n", "2", "--logs", str(tmp_path / "logs"), "--", "eval",
                             "--workdir", workdir, *evaluator), cwd=ROOT, env=_env(2), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "step 3: wrote" in proc.stdout and "wrote" not in open(tmp_path / "logs" / "1.log").read()  # one run of 2
  with open(os.path.join(workdir, "eval", "3.json")) as f:
    multi = json.load(f)
  _, single, _, _ = commands.evaluate_workdir(workdir, [tuple(a.removeprefix("--config.").split("=", 1)) for a in evaluator])
  assert multi["eval/zs/top1"] == pytest.approx(single["eval/zs/top1"]) and "eval/zs/top5" in multi


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      if predicate():
        return
    except (OSError, ValueError):  # not written yet, or a line caught half-written
      pass
    if proc.poll() is not None:
      raise AssertionError(f"process ended early: {proc.returncode}\n{proc.stdout.read()}")
    time.sleep(0.05)
  raise AssertionError("timed out")


STEPS = 16
RESUMABLE = ["train", "--config", f"configs/coca_tiny.py:steps={STEPS},evals=0"] + _overrides(
    ("log_every", "1"), ("ckpt_every", "5"), ("optim.warmup_steps", "2"))


def _uninterrupted(workdir):
  """Starts the reference run (2 devices), to finish while the test interrupts its own."""
  return subprocess.Popen(_cli(*RESUMABLE, "--workdir", workdir), cwd=ROOT, env=_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _resume_and_compare(broken, reference, full):
  """Resumes `broken` to the end; its losses (one row per step) and final state equal `full`'s bitwise."""
  done = subprocess.run(_cli(*RESUMABLE, "--workdir", broken), cwd=ROOT, env=_env(2), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "resuming from step" in done.stdout
  out = ""
  if reference.returncode is None:  # the first comparison waits for it; a second finds it done
    out, _ = reference.communicate(timeout=600)
  assert reference.returncode == 0, out
  a = _losses(full)
  assert sorted(a) == list(range(1, STEPS + 1))
  rows = _rows(broken)  # rows logged after the checkpoint resumed from were dropped, then logged again
  assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
  for row in rows:
    assert row["train/loss"] == a[row["step"]], row["step"]
  cfg = config.load(os.path.join(ROOT, f"configs/coca_tiny.py:steps={STEPS},evals=0"), MICRO)
  ref, got = restore_state(cfg, full), restore_state(cfg, broken)
  assert int(got.step) == int(ref.step) == STEPS
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), got, ref)
  return done.stdout


def test_sigterm_or_kill_9_then_resume_equals_an_uninterrupted_run_bitwise(tmp_path):
  """SIGTERM once training runs: the process saves the step it reached and exits 143 (unfinished);
  the same command resumes it. SIGKILL after the step-5 checkpoint is whole and step 7 is logged: the
  next run resumes from the last whole checkpoint and drops the rows the killed run logged after it.
  Both against one uninterrupted run. (2 devices: resharding on restore has its own test.)"""
  full, termed, killed = str(tmp_path / "full"), str(tmp_path / "termed"), str(tmp_path / "killed")
  reference = _uninterrupted(full)
  proc = subprocess.Popen(_cli(*RESUMABLE, "--workdir", termed), cwd=ROOT, env=_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: os.path.exists(os.path.join(termed, "metrics.jsonl")) and len(_rows(termed)) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 143, out
  saved = int(out.split("preempted: saved step ")[1].split(";")[0])
  assert saved < STEPS and str(saved) in os.listdir(os.path.join(termed, "checkpoints"))
  proc = subprocess.Popen(_cli(*RESUMABLE, "--workdir", killed), cwd=ROOT, env=_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: os.path.isdir(os.path.join(killed, "checkpoints", "5")) and max(_losses(killed)) >= 7, proc)
  proc.kill()
  proc.wait()
  _resume_and_compare(termed, reference, full)
  out = _resume_and_compare(killed, reference, full)
  assert "dropped" in out and "rows after step" in out


def test_nan_policies(micro_cfg, tmp_path, monkeypatch, capsys):
  poisoned = {3}  # steps whose batch is NaN; read when the step is traced
  original = train.train_step

  def poisoning_step(state, batch, **kw):
    bad = jnp.isin(state.step + 1, jnp.asarray(sorted(poisoned)))
    return original(state, {**batch, "image": jnp.where(bad, jnp.nan, batch["image"])}, **kw)
  monkeypatch.setattr(train, "train_step", poisoning_step)
  common = (("log_every", "1"), ("ckpt_every", "2"))
  workdir = str(tmp_path / "run")

  # halt: stop at the bad step, exit non-zero naming it, save nothing after the last good checkpoint.
  with pytest.raises(train.TrainingHalted, match="at step 3 .nan_policy=halt"):
    train.train(micro_cfg(*common, ("nan_policy", "halt"), spec="configs/coca_tiny.py:steps=6,evals=0"), workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]

  # skip: the same run resumed from step 2 drops step 3's update, counts it and goes on; then
  # nan_max_skips non-finite steps in a row (7 and 8) halt it, keeping the last checkpoint (6).
  poisoned.update({7, 8})
  with pytest.raises(train.TrainingHalted, match="2 non-finite steps in a row up to step 8"):
    train.train(micro_cfg(*common, ("nan_policy", "skip"), ("nan_max_skips", "2"),
                          spec="configs/coca_tiny.py:steps=10,evals=0"), workdir)
  rows = {r["step"]: r for r in _rows(workdir)}
  assert rows[6]["train/skipped_steps"] == 1 and np.isfinite(rows[6]["train/loss"])
  # the logged lr is the one each step used: step 3's update was dropped, so step 4 reuses its lr
  lr = optim.schedule(micro_cfg(spec="configs/coca_tiny.py:steps=10,evals=0").optim, 10)
  for step in (3, 4, 5, 6):
    assert rows[step]["train/lr"] == pytest.approx(float(lr(step - 1 - (step > 3)))), step
  # strict JSON: the non-finite values are null and named
  assert rows[3]["train/loss"] is None and "train/loss" in rows[3]["nonfinite"] and np.isfinite(rows[4]["train/loss"])
  assert "nonfinite" not in rows[4]
  assert "step 3: non-finite loss, gradient or updated parameters, update skipped" in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int)[-1] == "6"


def test_distributed_arguments_are_checked(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_PROCID",
              "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  assert distributed.initialize() is False  # one process, nothing set: nothing to do
  with pytest.raises(config.ConfigError, match="go together"):
    distributed.initialize("127.0.0.1:1234", None, 0)
  with pytest.raises(config.ConfigError, match="not in"):
    distributed.initialize("127.0.0.1:1234", 2, 2)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(config.ConfigError, match="not an integer"):
    distributed.initialize()
  monkeypatch.delenv("JAX_NUM_PROCESSES")
  monkeypatch.setenv("SLURM_PROCID", "0")  # salloc's variables, but not started by srun
  monkeypatch.setenv("SLURM_NTASKS", "2")
  with pytest.raises(config.ConfigError, match="says 2 processes, but jax.distributed found no cluster to join"):
    distributed.initialize()


def test_a_workdir_url_is_refused_in_one_line(micro_cfg):
  with pytest.raises(config.ConfigError, match="use a path on this machine or on storage every host mounts"):
    train.train(micro_cfg(), "gs://bucket/run1")
  assert not os.path.exists("gs:")


def test_two_processes_agree_to_fall_back_from_an_unreadable_checkpoint(tmp_path):
  """Parameters sharded over both processes (FSDP). Step 4's merged data file is cut short: the processes
  agree the step is unreadable (`train_state._agreed`: a step counts as read only where every process
  read it), it is moved aside with one warning line, and both resume from step 2, redoing steps 3-4 bit
  for bit. (Here both processes read the whole file; a failure on one process only cannot be staged.)"""
  args = ("launch", "local", "-n", "2", "--devices-per-process", "2", "--logs", str(tmp_path / "logs"), "--",
          "train", "--config", "configs/coca_tiny.py:steps=4,evals=0", "--workdir", str(tmp_path / "run"),
          *_overrides(("ckpt_every", "2"), ("log_every", "1"), ("mesh.data", "1"), ("mesh.fsdp", "4")))
  first = subprocess.run(_cli(*args), cwd=ROOT, env=_env(2), capture_output=True, text=True)
  assert first.returncode == 0, first.stdout + first.stderr
  before = _losses(tmp_path / "run")
  folder = tmp_path / "run" / "checkpoints" / "4" / "state" / "d"
  biggest = max(folder.iterdir(), key=lambda p: p.stat().st_size)
  os.truncate(biggest, biggest.stat().st_size // 3)
  again = subprocess.run(_cli(*args), cwd=ROOT, env=_env(2), capture_output=True, text=True)
  out = again.stdout + again.stderr
  assert again.returncode == 0, out
  warnings = [line for line in out.splitlines() if line.startswith("checkpoint step 4 is unreadable")]
  assert len(warnings) == 1 and "resuming from step 2" in warnings[0] and "TensorStore details" not in warnings[0], out
  assert [p.name.split("-")[0] for p in (tmp_path / "run" / "checkpoints.corrupt").iterdir()] == ["4"]
  assert _losses(tmp_path / "run") == before
  assert [x["resumed_from_step"] for x in json.load(open(tmp_path / "run" / "run.json"))["launches"]] == [0, 2]
