"""Evaluators on a micro CoCa: run_all, 8 devices vs 1, greedy decoding vs a naive loop, the commands.

One module-scoped model and run, so each model function compiles once for the file.
"""

import contextlib
import io
import json
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import MICRO, ROOT
from vlmjax import checkpoint, cli, config, sharding, train_state
from vlmjax.data import synthetic
from vlmjax.evals import captioning, common, data, decode, defaults
from vlmjax.evals.suite import prepare_all

SHAPES = "synthetic:shapes:validation"


def run_all(cfg, graphdef, params, mesh, *, step, final=False):
  return prepare_all(cfg, mesh).run(graphdef, params, step=step, final=final)
CAPTION_LEN = 10


@pytest.fixture(scope="module")
def micro():
  cfg = config.load(os.path.join(ROOT, "configs/coca_tiny.py:evals=0"), MICRO)
  cfg.evals.zs = defaults.zero_shot(SHAPES, batch_size=32, num_examples=48, templates="shapes", every=2)
  cfg.evals.ret = defaults.retrieval(SHAPES, batch_size=32, num_examples=40, every=3)
  cfg.evals.cap = defaults.captioning(SHAPES, batch_size=16, num_examples=16, max_len=CAPTION_LEN, every=3,
                                      meteor=False)
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  # Random host parameters (evaluators do not care how they were made): compiling train_state.init_state or
  # building the model eagerly costs ~10 s on XLA:CPU; the optimiser state only fills the checkpoint.
  rng = np.random.default_rng(0)
  def init(path, a):  # layer-norm scales near 1, everything else small
    return (rng.normal(size=a.shape) * 0.1 + (path[-1].key == "scale")).astype(a.dtype)
  host = train_state.TrainState(
      step=np.int32(3), params=jax.tree_util.tree_map_with_path(init, s.abstract_state.params),
      opt_state=jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), s.abstract_state.opt_state))
  params = jax.device_put(host.params, s.state_shardings.params)
  metrics = run_all(cfg, s.graphdef, params, s.mesh, step=3, final=True)
  return cfg, s, host, params, metrics


def _values(metrics):
  return {k: v for k, v in metrics.items() if not k.endswith("/seconds")}


def test_run_all_reports_every_metric_of_the_due_evaluators(micro):
  cfg, s, _, params, metrics = micro
  assert set(_values(metrics)) == {
      "eval/zs/top1", "eval/zs/top5", "eval/zs/mean_per_class_recall", "eval/cap/cider", "eval/cap/bleu4",
      "eval/cap/rouge_l",
      *(f"eval/ret/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))}
  assert all(0 <= v <= 1 for k, v in _values(metrics).items() if "/zs/" in k or "/ret/" in k)
  assert metrics["eval/zs/top1"] <= metrics["eval/zs/top5"]
  assert common.due(cfg.evals, 2) == ["zs"] and set(common.due(cfg.evals, 3)) == {"ret", "cap"}
  assert run_all(cfg, s.graphdef, params, s.mesh, step=5) == {}
  assert set(run_all(cfg, s.graphdef, params, s.mesh, step=4)) == {
      "eval/zs/top1", "eval/zs/top5", "eval/zs/mean_per_class_recall", "eval/zs/seconds"}


def test_evaluators_on_8_devices_equal_1_device(micro):
  cfg, s8, host, _, metrics8 = micro
  assert s8.mesh.size == 8
  s1 = train_state.setup(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
  params1 = jax.device_put(host.params, s1.state_shardings.params)
  metrics1 = run_all(cfg, s1.graphdef, params1, s1.mesh, step=3, final=True)
  assert _values(metrics1) == pytest.approx(_values(metrics8), abs=1e-9)


def test_greedy_decoding_equals_a_naive_argmax_loop(micro):
  cfg, s, _, params, _ = micro
  ds = data.EvalSet("cap", cfg.evals.cap, data.context(cfg, s.mesh))
  images, n = next(ds.image_batches())
  options = {**captioning.decode_options(cfg.evals.cap), **captioning.special_ids(ds.tokenizer)}  # compiled
  assert options["method"] == "greedy" and options["max_len"] == CAPTION_LEN
  got = data.gather(decode.jit_generate(s.graphdef, params, images, jax.random.fold_in(jax.random.key(0), 0),
                                        **options), n)
  ctx = data.apply_model(params, images, graphdef=s.graphdef, method="caption_context")
  logits_fn = jax.jit(lambda p, c, t: nnx.merge(s.graphdef, p).caption_logits(c, t))
  prefix = np.ones((n, 1), np.int32)
  steps = 3  # greedy is prefix-consistent: the first tokens of a longer decode; each length compiles
  for _ in range(steps):  # exact-length prefixes (no padding), no early stop
    nxt = np.argmax(np.asarray(logits_fn(params, ctx, jnp.asarray(prefix))[:, -1]), axis=-1)
    prefix = np.concatenate([prefix, nxt[:, None].astype(np.int32)], axis=1)
  want = prefix[:, 1:]
  for row in want:  # PAD after the first EOS, as generate() returns
    eos = np.nonzero(row == 2)[0]
    if len(eos):
      row[eos[0] + 1:] = 0
  np.testing.assert_array_equal(got[:, :steps], want)


def _workdir(tmp_path, cfg, state):
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  config.dump(cfg, str(workdir / "config.json"))
  ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"), cfg)
  ckpt.save(3, state, {})
  ckpt.close()
  return workdir


def _cli(*args):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(list(args))
  return code, out.getvalue(), err.getvalue()


def test_eval_and_caption_commands_on_a_checkpoint(micro, tmp_path, monkeypatch):
  cfg, _, host, _, metrics = micro
  monkeypatch.setattr(cli, "_COMMAND_MODULES", ("vlmjax.evals.commands",))  # only the group under test
  workdir = _workdir(tmp_path, cfg, host)
  code, out, err = _cli("eval", "--workdir", str(workdir))
  assert code == 0, err
  written = json.load(open(workdir / "eval" / "3.json"))
  assert written["step"] == 3 and _values(written) == pytest.approx({**_values(metrics), "step": 3}, abs=1e-9)
  assert out.splitlines()[-1] == f"step 3: wrote {workdir / 'eval' / '3.json'}"

  code, out, err = _cli("eval", "--workdir", str(workdir), "--step", "3", "--config.evals.more=zero_shot:" + SHAPES,
                        "--config.evals.more.batch_size=32", "--config.evals.more.num_examples=48",
                        "--config.evals.more.templates=shapes")
  assert code == 0, err
  added = json.load(open(workdir / "eval" / "3.json"))
  assert added["eval/more/top1"] == written["eval/zs/top1"] and added["eval/more/top5"] == written["eval/zs/top5"]
  code, _, err = _cli("eval", "--workdir", str(workdir), "--config.evals.zs.num_examples=1000000")
  assert code == 2 and "exceeds" in err and "\n" not in err.strip()
  code, _, err = _cli("eval", "--workdir", str(workdir), "--step", "7")
  assert code == 2 and "no checkpoint at step 7" in err

  paths = []
  for i in range(16):  # the captioning evaluator's batch: its compiled decoder is reused
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(synthetic.example(i, seed=2, image_size=32)["image"]).save(paths[-1])
  code, out, err = _cli("caption", "--workdir", str(workdir), *paths, "--max-len", str(CAPTION_LEN))
  assert code == 0, err
  lines = out.splitlines()
  assert [line.split("\t")[0] for line in lines] == paths
  seen = []  # without --max-len, captions may be as long as the model's text context (not cut at 32)
  monkeypatch.setattr(decode, "jit_generate", lambda *a, max_len, **kw: seen.append(max_len) or
                      jnp.zeros((a[2].shape[0], max_len), jnp.int32))
  code, _, err = _cli("caption", "--workdir", str(workdir), paths[0])
  assert code == 0 and seen == [cfg.model.text.context_length], err
  code, _, err = _cli("caption", "--workdir", str(workdir), str(workdir / "config.json"))
  assert code == 2 and "cannot decode image" in err


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_kv_cached_decoding_equals_uncached_token_for_token(micro, method):
  cfg, s, _, params, _ = micro
  ds = data.EvalSet("cap", cfg.evals.cap, data.context(cfg, s.mesh))
  images, n = next(ds.image_batches())

  @functools.partial(jax.jit, static_argnums=2)
  def run(params, images, cached):
    model = nnx.merge(s.graphdef, params)
    stepper = decode.Cached() if cached else decode.Recompute()
    return decode.generate(model, images, max_len=CAPTION_LEN, method=method, beam_size=3, stepper=stepper)
  cached, uncached = run(params, images, True), run(params, images, False)
  np.testing.assert_array_equal(np.asarray(cached)[:n], np.asarray(uncached)[:n])
