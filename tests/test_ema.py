"""optim.ema_decay: an exponential moving average of the parameters, kept in the optimiser state
(`optim.with_ema`), sharded like the parameters, resumed exactly, and evaluated where an evaluator
asks for it (`evals.<name>.params="ema"`), in training and in `vlmjax eval`."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import restore_state
from vlmjax import config, optim, sharding, train, train_state
from vlmjax.data import pipeline
from vlmjax.evals import commands as eval_commands
from vlmjax.evals import common, data, defaults, registry, suite

SHAPES = "synthetic:shapes:test"


def _batches(cfg, s, n):
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed,
                        image_size=cfg.model.image_size, context_length=cfg.model.text.context_length,
                        vocab_size=cfg.model.text.vocab_size, sharding=s.batch_sharding)
  return [next(data) for _ in range(n)]


def _numpy_ema(decay, history):
  """The EMA by the documented recurrence, in float32: e <- e + (1 - d_t) (p_t - e), d_t = min(decay,
  (1 + t) / (10 + t)), e_0 = the initial parameters; `history` = [initial, after update 1, ...]."""
  ema = history[0]
  for t, params in enumerate(history[1:]):
    d = min(np.float32(decay), np.float32(1 + t) / np.float32(10 + t))
    ema = jax.tree.map(lambda e, p, d=d: (e + (np.float32(1) - d) * (p - e)).astype(np.float32), ema, params)
  return ema


def _max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


def test_the_ema_follows_its_recurrence_is_sharded_like_the_params_and_skips_dropped_updates(micro_cfg):
  """Four updates on a data x FSDP x tensor mesh with the temperature clamped (the EMA averages the
  clamped parameter, as kept): the EMA equals a NumPy recurrence over the recorded parameters; each
  EMA array has its parameter's sharding; a non-finite step changes neither."""
  cfg = micro_cfg(("optim.ema_decay", "0.9"), ("optim.lr", "3e-3"), ("optim.warmup_steps", "0"),
                  ("model.init_logit_scale", "150.0"), ("mesh.data", "2"), ("mesh.fsdp", "2"), ("mesh.tensor", "2"))
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  ema_sh = optim.ema_params(s.state_shardings.opt_state)
  assert jax.tree.structure(ema_sh) == jax.tree.structure(s.state_shardings.params)
  assert jax.tree.leaves(ema_sh) == jax.tree.leaves(s.state_shardings.params)
  kernel = lambda tree: tree["vision"]["blocks"]["layers"][0]["mlp"]["fc1"]["kernel"]
  assert kernel(ema_sh).spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # not replicated

  state, step = train_state.init_state(cfg, s), train.compile_train_step(cfg, s)
  history = [jax.device_get(state.params)]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(optim.ema_params(state.opt_state)), history[0])
  for batch in _batches(cfg, s, 4):
    state, m = step(state, batch)
    assert bool(m["finite"])
    history.append(jax.device_get(state.params))
  ema = optim.ema_params(state.opt_state)
  assert jax.tree.map(lambda a: a.sharding, ema) == jax.tree.map(lambda a: a.sharding, state.params)
  assert int(state.opt_state.count) == 4
  diff = _max_diff(jax.device_get(ema), _numpy_ema(0.9, history))
  print(f"EMA vs NumPy recurrence, max |diff| over 4 steps: {diff:.3g}")
  assert diff <= 1e-7
  assert float(history[1]["logit_scale"]) == pytest.approx(np.log(100.0))  # clamped, and so averaged
  assert _max_diff(jax.device_get(ema), history[-1]) > 1e-4  # not the parameters themselves

  before = jax.device_get(state.opt_state)
  bad = _batches(cfg, s, 1)[0]
  bad = {**bad, "image": bad["image"] * np.nan}
  state, m = step(state, bad)
  assert not bool(m["finite"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state), before)


def test_a_run_stopped_and_resumed_has_the_ema_of_an_uninterrupted_one_bit_for_bit(micro_cfg, tmp_path):
  """Stopped at step 2 and resumed to 4: the EMA (and all else) as a 4-step run's; a frozen tower's EMA
  stays its (initial) parameters exactly."""
  cfg = micro_cfg(("optim.ema_decay", "0.5"), ("total_steps", "4"), ("ckpt_every", "2"), ("ckpt_keep", "2"),
                  ("optim.freeze", "vision"))
  full, broken = str(tmp_path / "full"), str(tmp_path / "broken")
  assert train.train(cfg, full)["finished"]
  shutil.copytree(full, broken)  # the same run, stopped after step 2's checkpoint (one training run fewer)
  shutil.rmtree(os.path.join(broken, "checkpoints", "4"))
  assert train.train(cfg, broken)["finished"]
  ref, got = restore_state(cfg, full), restore_state(cfg, broken)
  assert int(got.step) == int(ref.step) == 4 and int(got.opt_state.count) == 4
  jax.tree.map(np.testing.assert_array_equal, optim.ema_params(got.opt_state), optim.ema_params(ref.opt_state))
  jax.tree.map(np.testing.assert_array_equal, got.params, ref.params)
  ema = optim.ema_params(got.opt_state)
  jax.tree.map(np.testing.assert_array_equal, ema["vision"], got.params["vision"])
  assert _max_diff(ema["text"], got.params["text"]) > 0


class Similarity:
  """A test evaluator with a continuous metric: the mean cosine similarity of paired embeddings."""

  @staticmethod
  def config(source, **options):
    return common.fields("similarity", source, **{**dict(batch_size=32, every=0, num_examples=64,
                                                         image_mode="center_crop"), **options})

  @staticmethod
  def check(where, ev):
    pass

  class prepare:
    def __init__(self, name, ev, ctx):
      self.ds = data.EvalSet(name, ev, ctx)

    def evaluate(self, graphdef, params):
      images = data.embed_images(self.ds, graphdef, params)
      texts = data.embed_texts(self.ds, graphdef, params, self.ds.tokenize([c[0] for c in self.ds.captions()]))
      return {"similarity": float(np.mean(np.sum(images * texts, axis=-1)))}


def test_an_evaluator_with_params_ema_evaluates_the_ema_in_training_and_in_vlmjax_eval(micro_cfg, tmp_path,
                                                                                       monkeypatch):
  """Two evaluators, one on the parameters and one on their EMA: they differ after a few steps; the
  EMA's metric equals the one computed by hand on the checkpoint's EMA, and `vlmjax eval` gives both
  again (reading the EMA from the checkpoint)."""
  monkeypatch.setitem(registry.EVALUATORS, "similarity", Similarity)
  cfg = micro_cfg(("optim.ema_decay", "0.5"), ("total_steps", "3"), ("optim.lr", "3e-3"),
                  ("optim.warmup_steps", "0"))
  cfg.evals.sim = Similarity.config(SHAPES)
  cfg.evals.sim_ema = Similarity.config(SHAPES, params="ema")
  workdir = str(tmp_path / "run")
  assert train.train(cfg, workdir)["finished"]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  logged = next(r for r in rows if "eval/sim_ema/similarity" in r)
  print("similarity of the params, of the EMA:", logged["eval/sim/similarity"], logged["eval/sim_ema/similarity"])
  assert abs(logged["eval/sim/similarity"] - logged["eval/sim_ema/similarity"]) > 1e-4

  loaded = eval_commands.load_config(workdir, ())
  s, trees, step = train_state.restore_trees(workdir, loaded, None, ("params", "ema"))
  assert step == 3
  state = restore_state(loaded, workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trees["ema"]), optim.ema_params(state.opt_state))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trees["params"]), state.params)
  by_hand = suite.prepare_all(loaded, s.mesh).prepared["sim_ema"].evaluate(s.graphdef, trees["ema"])
  assert logged["eval/sim_ema/similarity"] == pytest.approx(by_hand["similarity"], abs=1e-6)
  _, again, _, _ = eval_commands.evaluate_workdir(workdir)
  assert again["eval/sim_ema/similarity"] == pytest.approx(logged["eval/sim_ema/similarity"], abs=1e-6)
  assert again["eval/sim/similarity"] == pytest.approx(logged["eval/sim/similarity"], abs=1e-6)


def test_bad_values_are_one_line_errors_and_old_configs_keep_working(micro_cfg, tmp_path):
  for value in ("1.0", "-0.1", "nan", "1.5"):
    with pytest.raises(config.ConfigError) as e:
      micro_cfg(("optim.ema_decay", value))
    assert "optim.ema_decay" in str(e.value) and "\n" not in str(e.value)
  cfg = micro_cfg()
  cfg.evals.zs = defaults.zero_shot(SHAPES, batch_size=32, num_examples=32, templates="shapes")
  cfg.evals.zs.params = "weights"
  with pytest.raises(config.ConfigError, match=r"evals.zs.params='weights' is unknown; valid: params, ema") as e:
    suite.prepare_all(cfg)
  assert "\n" not in str(e.value)
  cfg.evals.zs.params = "ema"
  with pytest.raises(config.ConfigError, match=r"evals.zs.params='ema' needs .* optim.ema_decay is 0") as e:
    suite.prepare_all(cfg)
  assert "\n" not in str(e.value)

  # A config.json from before the EMA (no optim.ema_decay, no evals.<name>.params): loads, no EMA kept.
  stored = json.loads(micro_cfg().to_json_best_effort())
  del stored["optim"]["ema_decay"]
  stored["evals"] = {"zs": json.loads(defaults.zero_shot(SHAPES).to_json_best_effort())}
  del stored["evals"]["zs"]["params"]
  path = tmp_path / "config.json"
  path.write_text(json.dumps(stored))
  old = eval_commands.load_config_file(str(path), ())
  assert old.optim.ema_decay == 0.0 and old.evals.zs.params == "params"
  s = train_state.setup(old, sharding.make_mesh(old.mesh))
  assert optim.ema_params(s.abstract_state.opt_state) is None
  assert not isinstance(s.abstract_state.opt_state, optim.EmaState)  # old checkpoints' tree, unchanged
