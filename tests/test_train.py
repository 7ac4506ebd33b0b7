import json
import os
import signal
import time

import jax
import numpy as np

from vlmjax import checkpoint, preemption, sharding, train, train_state
from vlmjax.data import pipeline


def _fixed_batch(cfg, s, seed=0):
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=seed,
                        image_size=cfg.model.image_size, context_length=cfg.model.text.context_length,
                        vocab_size=cfg.model.text.vocab_size, sharding=s.batch_sharding)
  return next(data)


def test_data_parallel_and_fsdp_tensor_steps_equal_one_device_and_training_reduces_loss(micro_cfg):
  """One update on 1 device = on 8 (pure data parallel) = on a 2x2x2 data/FSDP/tensor mesh;
  then ten steps on one batch (8 devices) reduce the loss."""
  cfg = micro_cfg(("optim.lr", "3e-3"), ("optim.warmup_steps", "0"))  # no warmup: the first update moves
  s1 = train_state.setup(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
  state1 = train_state.init_state(cfg, s1)
  host_state = jax.device_get(state1)  # a copy: state1 is donated
  batch = jax.device_get(_fixed_batch(cfg, s1))
  out1, m1 = train.compile_train_step(cfg, s1)(state1, jax.device_put(batch, s1.batch_sharding))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), out1.params,
                                       host_state.params))
  # parameters take a step (else the comparisons below check nothing); attention's key biases get
  # no gradient (softmax ignores a shift shared by all keys): Adam turns their float noise into steps
  # of ~1e-6, hence atol 1e-5 below against steps of ~3e-3
  assert sum(m > 1e-5 for m in moved) >= 0.8 * len(moved), moved

  s8 = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  assert s8.mesh.shape["data"] == 8
  step8 = train.compile_train_step(cfg, s8)
  out8, m8 = step8(jax.device_put(host_state, s8.state_shardings), jax.device_put(batch, s8.batch_sharding))
  assert len(out8.params["vision"]["embed"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), out8.params, out1.params)

  sharded = micro_cfg(("optim.lr", "3e-3"), ("optim.warmup_steps", "0"), ("mesh.data", "2"), ("mesh.fsdp", "2"),
                      ("mesh.tensor", "2"))
  s = train_state.setup(sharded, sharding.make_mesh(sharded.mesh))
  kernel_sh = s.state_shardings.params["vision"]["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
  assert kernel_sh.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  out, m = train.compile_train_step(sharded, s)(jax.device_put(host_state, s.state_shardings),
                                                jax.device_put(batch, s.batch_sharding))
  np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), out.params, out1.params)

  state, losses = out8, [float(m8["loss"])]
  batch8 = jax.device_put(batch, s8.batch_sharding)
  for _ in range(9):
    state, m = step8(state, batch8)
    losses.append(float(m["loss"]))
  assert int(state.step) == 10
  assert losses[-1] < 0.8 * losses[0], losses


def test_checkpoint_round_trip_is_exact(micro_cfg, tmp_path):
  cfg = micro_cfg()
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  state, step = train_state.init_state(cfg, s), train.compile_train_step(cfg, s)
  state, _ = step(state, _fixed_batch(cfg, s))  # non-trivial optimiser state
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), cfg)
  ckpt.save(1, state, {"next_index": 7})
  ckpt.wait()
  restored, data_state = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
  ckpt.close()
  assert data_state == {"next_index": 7}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored, state)
  assert restored.params["text"]["token_embed"]["embedding"].sharding == \
      s.state_shardings.params["text"]["token_embed"]["embedding"]
  # Saved on 8 devices, restored onto 4 with FSDP: resharded, same values.
  cfg4 = micro_cfg(("mesh.fsdp", "2"))
  s4 = train_state.setup(cfg4, sharding.make_mesh(cfg4.mesh, devices=jax.devices()[:4]))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), cfg4)
  on4, _ = ckpt.restore(checkpoint.abstract_with_shardings(s4.abstract_state, s4.state_shardings))
  ckpt.close()
  kernel = on4.params["vision"]["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding == s4.state_shardings.params["vision"]["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
  assert len(kernel.sharding.device_set) == 4 and kernel.sharding.spec[0] == "fsdp"
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), on4, state)


def test_resume_refuses_another_setup_in_one_line_and_keeps_config_json(micro_cfg, tmp_path, capsys):
  import pytest
  from vlmjax import config, errors
  workdir = str(tmp_path / "run")
  base = (("total_steps", "4"), ("ckpt_every", "2"), ("data.train.source", "synthetic:shapes"))
  train.train(micro_cfg(*base), workdir, stop_after=2)
  stored = open(os.path.join(workdir, "config.json")).read()
  for change, name in [(("model.text.mlp_dim", "128"), "model.text.mlp_dim: 64 -> 128"),
                       (("seed", "5"), "seed: 0 -> 5")]:
    with pytest.raises(config.ConfigError, match="holds checkpoints of another setup") as e:
      train.train(micro_cfg(*base, change), workdir)
    assert name in str(e.value) and "\n" not in str(e.value)
    assert open(os.path.join(workdir, "config.json")).read() == stored  # nothing overwritten
  capsys.readouterr()
  summary = train.train(micro_cfg(*base, ("total_steps", "5"), ("log_every", "1")), workdir)  # may change
  assert summary["finished"] and "resuming with changed settings: " in capsys.readouterr().out
  # A step folder that is not a whole checkpoint (a copy cut short): moved aside with one line, and
  # the run resumes from the newest whole one.
  os.makedirs(os.path.join(workdir, "checkpoints", "9"))
  summary = train.train(micro_cfg(*base, ("total_steps", "12")), workdir)
  assert summary["finished"] and summary["steps"] == (5, 12)
  assert "checkpoint step 9 is unreadable" in capsys.readouterr().err
  assert [n.split("-")[0] for n in os.listdir(os.path.join(workdir, "checkpoints.corrupt"))] == ["9"]


def test_workdir_that_is_a_file_is_a_one_line_error(micro_cfg, tmp_path):
  import pytest
  from vlmjax import config
  (tmp_path / "file").write_text("x")
  with pytest.raises(config.ConfigError, match="cannot use --workdir"):
    train.train(micro_cfg(), str(tmp_path / "file"))


def test_sigterm_during_an_evaluation_stops_it_and_saves_that_step(micro_cfg, tmp_path, monkeypatch, capsys):
  """An evaluation can outlast the grace period before SIGKILL: SIGTERM stops it at once, the step
  it evaluated is saved (though not a checkpoint step), the run ends preempted, and resumes."""
  from vlmjax.evals import zero_shot
  finished = []

  def slow_evaluator(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(300):  # 30 s, unless interrupted
      time.sleep(0.1)
    finished.append(args[0])
    return {"top1": 0.0}
  monkeypatch.setattr(zero_shot.ZeroShot, "evaluate", slow_evaluator)
  workdir = str(tmp_path / "run")
  common = (("total_steps", "6"), ("ckpt_every", "5"), ("log_every", "1"))
  summary = train.train(micro_cfg(*common, ("evals.zero_shot.every", "3"), spec="configs/coca_tiny.py:evals=1"),
                        workdir)
  assert not finished  # interrupted, not waited out
  assert summary["preempted"] and not summary["finished"]
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["3"]
  out = capsys.readouterr().out
  assert "preempted during the evaluation at step 3: saved step 3" in out
  assert "stopped (preempted) at step 3/6: steps 0->3" in out and "done:" not in out
  summary = train.train(micro_cfg(*common), workdir)  # resumed without evaluators
  assert summary["finished"] and summary["steps"] == (3, 6)
  assert "\ndone: steps 3->6" in capsys.readouterr().out
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all("train/loss" in r for r in rows)


def test_a_save_cut_short_leaves_a_folder_the_next_run_removes(micro_cfg, tmp_path):
  directory = tmp_path / "checkpoints"
  for name in ("4", "6.orbax-checkpoint-tmp-1764633000", "notes"):
    (directory / name).mkdir(parents=True)
  (directory / "6.orbax-checkpoint-tmp-1764633000" / "state").write_text("half a checkpoint")
  ckpt = checkpoint.Checkpointer(str(directory), micro_cfg())
  ckpt.remove_unfinished()
  ckpt.close()
  assert sorted(os.listdir(directory)) == ["4", "notes"]


def test_wandb_logs_every_row_and_a_resumed_run_continues_the_same_wandb_run(micro_cfg, tmp_path, monkeypatch):
  """With `wandb.project` set, rows go to wandb too (a stand-in module records the calls: no network)."""
  import sys
  import types

  import pytest
  from vlmjax import config, metrics
  calls = []

  class Run:
    def log(self, row, step):
      calls.append(("log", step, dict(row)))

    def finish(self):
      calls.append(("finish",))

  def init(**kw):
    calls.append(("init", kw))
    return Run()
  monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
  cfg = micro_cfg(("wandb.project", "shapes"), ("wandb.mode", "offline"))
  workdir = str(tmp_path / "exp1")
  os.makedirs(workdir)
  for start in (0, 2):  # a first run, then a resumed one
    writer = metrics.Writer(workdir, total_steps=4, batch_size=16, start_step=start, wandb_cfg=cfg.wandb,
                            run_config={"seed": 0})
    writer.write(start + 1, {"loss": 2.0})
    writer.write_evals(start + 1, {"eval/zs/top1": 0.5})
    writer.close()
  inits = [c[1] for c in calls if c[0] == "init"]
  assert inits[0]["id"] == inits[1]["id"] and inits[0]["resume"] == "allow"
  assert inits[0]["project"] == "shapes" and inits[0]["name"] == "exp1" and inits[0]["mode"] == "offline"
  assert inits[0]["config"] == {"seed": 0}
  assert ("log", 1, {"train/loss": 2.0}) in calls and ("log", 3, {"eval/zs/top1": 0.5}) in calls
  assert calls.count(("finish",)) == 2
  monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
  with pytest.raises(config.ConfigError, match="needs the wandb package: pip install wandb"):
    metrics.Writer(workdir, total_steps=4, batch_size=16, start_step=0, wandb_cfg=cfg.wandb)
  with pytest.raises(config.ConfigError, match="wandb.mode='offlne' is unknown"):
    micro_cfg(("wandb.mode", "offlne"))


def test_frozen_parameters_stay_as_initialised_through_training_and_resume(micro_cfg, tmp_path):
  """optim.freeze (the README's fine-tuning recipe): the frozen tower keeps its initial values
  bit for bit (no update, no weight decay), the rest trains, and the run checkpoints and resumes."""
  from vlmjax import sharding
  cfg = micro_cfg(("optim.freeze", "vision"), ("total_steps", "4"), ("ckpt_every", "2"), ("optim.warmup_steps", "1"))
  workdir = str(tmp_path / "run")
  train.train(cfg, workdir, stop_after=2)
  assert train.train(cfg, workdir)["finished"]
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  init = jax.device_get(train_state.init_state(cfg, s).params)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
  state, _ = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
  ckpt.close()
  got = jax.device_get(state.params)
  assert int(state.step) == 4
  jax.tree.map(np.testing.assert_array_equal, got["vision"], init["vision"])
  assert not np.array_equal(got["text"]["token_embed"]["embedding"], init["text"]["token_embed"]["embedding"])


def test_the_learned_temperature_is_clamped_after_each_update_as_open_clip_does(micro_cfg):
  """exp(logit_scale) <= model.max_logit_scale (100 for CLIP/CoCa) after every step; 0: no clamp."""
  for max_scale, expected in ((100.0, np.log(100.0)), (0.0, np.log(150.0))):
    cfg = micro_cfg(("model.init_logit_scale", "150.0"), ("model.max_logit_scale", str(max_scale)))
    s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
    state, _ = train.compile_train_step(cfg, s)(train_state.init_state(cfg, s), _fixed_batch(cfg, s))  # lr 0 at step 0
    np.testing.assert_allclose(float(state.params["logit_scale"]), expected, rtol=1e-6)


def test_first_ctrl_c_stops_at_the_next_step_with_a_save_and_a_second_stops_at_once(monkeypatch, capsys):
  import pytest

  class Exited(Exception):
    pass

  def fake_exit(code):
    raise Exited(code)
  monkeypatch.setattr(preemption.os, "_exit", fake_exit)  # the real one would end the test process
  before = signal.getsignal(signal.SIGINT)
  watcher = preemption.PreemptionWatcher()
  try:
    assert not watcher.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert watcher.reached(2) and watcher.interrupted
    with pytest.raises(Exited, match="130"):  # at once, whatever runs (an orbax save cannot hold it)
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)  # the handler runs at the next bytecode boundary
  finally:
    watcher.close()
  assert "vlmjax: interrupted again: stopped at once" in capsys.readouterr().err
  assert signal.getsignal(signal.SIGINT) is before
