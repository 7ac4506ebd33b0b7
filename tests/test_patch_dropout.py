"""FLIP patch dropout (`model.vision.patch_dropout`, issue 20 item 1): in training each image keeps a
random round((1 - p) * N) of its patch tokens (the class token always), gathered after the position
embedding; evaluation sees every patch; the training FLOPs fall; a run resumes bit-exactly."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vlmjax import cli, config, info, models, presets, sharding, train, train_state, workdir as workdirs
from vlmjax.data import pipeline
from vlmjax.models import layers
from vlmjax.models.vision import ViT, keep_indices, kept_patches

from conftest import MICRO, ROOT

N = 16  # 32 px images, patch 8


def _vit(p=0.5, **kw):
  v = presets.vit_config(patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, patch_dropout=p, **kw)
  return ViT(v, 32, norm_eps=1e-6, act="gelu", dtype=jnp.float32, param_dtype=jnp.float32, remat="none",
             scan=False, attention="xla", rngs=nnx.Rngs(0))


def _image(batch=3, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_kept_tokens_are_the_position_embedded_tokens_at_the_drawn_indices(posemb):
  vit, image, rng = _vit(cls_token=True, posemb=posemb), _image(), jax.random.key(7)
  got = np.asarray(vit.input_tokens(image, rng))
  idx = np.asarray(keep_indices(rng, 3, N, 8))
  # NumPy reference: patches embedded, every position embedded, then the drawn patches, class token first
  patches = image.reshape(3, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, N, 192)
  x = patches @ np.asarray(vit.embed.kernel[...]) + np.asarray(vit.embed.bias[...])
  pos = (np.asarray(vit.posemb[...]) if posemb == "learn"
         else np.concatenate([np.zeros((1, 32)), np.asarray(layers.sincos_2d(4, 4, 32))]))  # class token: zero
  full = np.concatenate([np.broadcast_to(np.asarray(vit.cls[...]), (3, 1, 32)), x], axis=1) + pos
  want = np.concatenate([full[:, :1], np.take_along_axis(full[:, 1:], idx[:, :, None], axis=1)], axis=1)
  assert got.shape == (3, 1 + 8, 32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(vit.input_tokens(image), full, rtol=1e-5, atol=1e-5)  # no rng: every patch


def test_train_keeps_round_half_of_the_patches_and_the_class_token_per_example_and_per_rng():
  vit, image = _vit(cls_token=True, pool="gap"), _image(batch=4)
  a, b = jax.random.key(1), jax.random.key(2)
  idx = np.asarray(keep_indices(a, 4, N, kept_patches(N, 0.5)))
  assert idx.shape == (4, 8) and all(len(set(row)) == 8 and list(row) == sorted(row) for row in idx)
  assert len({tuple(row) for row in idx}) == 4  # each example its own subset
  np.testing.assert_array_equal(idx, keep_indices(a, 4, N, 8))  # the same rng: the same subsets
  assert not np.array_equal(idx, keep_indices(b, 4, N, 8))
  tokens, pooled = vit(image, train=True, rng=a)
  assert tokens.shape == (4, 1 + 8, 32)
  np.testing.assert_allclose(pooled, tokens[:, 1:].mean(axis=1), rtol=1e-6)  # gap over the kept patches
  np.testing.assert_array_equal(vit(image, train=True, rng=a)[0], tokens)
  assert vit(image)[0].shape == (4, 1 + N, 32) and vit(image, train=False, rng=a)[0].shape == (4, 1 + N, 32)
  assert _vit(cls_token=True, pool="cls")(image, train=True, rng=a)[0].shape == (4, 8, 32)
  with pytest.raises(ValueError, match="needs `rng`"):
    vit(image, train=True)
  assert (kept_patches(196, 0.75), kept_patches(16, 0.99), kept_patches(16, 0.0)) == (49, 1, 16)


def _micro(*overrides, spec="configs/coca_tiny.py:evals=0"):
  return config.load(os.path.join(ROOT, spec), MICRO + tuple(overrides))


@nnx.jit
def _evaluated_and_trained(model, image, text, rng):
  """(the output outside training, `encode_image`, the image embedding in training)."""
  return model(image, text), model.encode_image(image), model(image, text, train=True, rng=rng).image_emb


def test_evaluation_is_unchanged_by_the_knob():
  image, rng = _image(batch=4), jax.random.key(3)
  text = np.random.default_rng(0).integers(3, 259, size=(4, 40)).astype(np.int32)
  (a, _, a_train), (b, b_image, b_train) = (
      _evaluated_and_trained(models.build(_micro(("model.vision.patch_dropout", p)).model, nnx.Rngs(0)),
                             image, text, rng) for p in ("0", "0.5"))
  same = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)  # two programs: fusion may differ
  for field in ("image_emb", "text_emb", "caption_logits"):
    same(getattr(a, field), getattr(b, field))
  same(b_image, a.image_emb)  # what evaluators call
  same(a_train, a.image_emb)  # p=0: nothing dropped in training either
  assert not np.allclose(b_train, a.image_emb, atol=1e-3)


def test_a_captioner_decoder_attends_to_the_kept_tokens_only_in_training():
  cfg = config.load(os.path.join(ROOT, "configs/cappa_tiny.py"), (("model.vision.patch_dropout", "0.75"),))
  graphdef, state = nnx.split(models.abstract(cfg.model))
  image = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  context = lambda **kw: jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).caption_context(x, **kw), state, image)
  assert context(train=True, rng=jax.random.key(0)).shape == (2, 4, 128)  # round(0.25 * 16) tokens
  assert context().shape == (2, N, 128)  # captions are decoded from every patch


def test_training_flops_fall_with_the_dropout():
  half = info.train_flops(_micro(("model.vision.patch_dropout", "0.5")))
  full, flops = half["train_flops_per_example_no_patch_dropout"], half["train_flops_per_example"]
  quarter = info.train_flops_per_example(_micro(("model.vision.patch_dropout", "0.75")))
  assert full > flops > quarter, (full, flops, quarter)
  assert half["kept_patches"] == [8, N] and half["patch_dropout"] == 0.5


RUN = (("total_steps", "4"), ("ckpt_every", "2"), ("log_every", "1"), ("model.vision.patch_dropout", "0.75"))


@pytest.fixture(scope="module")
def reference_losses():
  """Four CoCa steps with p=0.75 on the data a run reads, by the compiled train step itself."""
  cfg = _micro(*RUN)
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  state, step = train_state.init_state(cfg, s), train.compile_train_step(cfg, s)
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed, image_size=32,
                        context_length=40, vocab_size=259, sharding=s.batch_sharding)
  out = []
  for _ in range(4):
    state, m = step(state, next(data))
    assert bool(m["finite"])
    out.append(float(m["loss"]))
  data.close()
  return out


def test_a_coca_train_step_with_three_quarters_dropped_is_finite(reference_losses):
  assert all(np.isfinite(reference_losses)) and reference_losses[-1] < reference_losses[0]


def _losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_a_run_with_patch_dropout_resumes_bit_exactly_and_may_drop_it_on_resume(reference_losses, tmp_path,
                                                                                  capsys):
  run = str(tmp_path / "run")
  assert train.train(_micro(*RUN), run, stop_after=2)["steps"] == (0, 2)
  assert train.train(_micro(*RUN), run)["steps"] == (2, 4)
  assert _losses(run) == dict(zip(range(1, 5), reference_losses))  # bitwise: the keys come from (seed, step)
  capsys.readouterr()
  workdirs.check_resume(_micro(*RUN, ("model.vision.patch_dropout", "0")), run)  # unmasked fine-tune: allowed
  assert "model.vision.patch_dropout: 0.75 -> 0.0" in capsys.readouterr().out
  with pytest.raises(config.ConfigError, match="another setup"):
    workdirs.check_resume(_micro(*RUN, ("model.vision.patch_size", "4")), run)


@pytest.mark.parametrize("value", ["1.0", "-0.1", "x"])
def test_a_bad_value_is_one_line_before_anything_compiles(value, tmp_path, capsys):
  workdir = tmp_path / "run"
  micro = [f"--config.{k}={v}" for k, v in MICRO]
  rc = cli.main(["train", "--config", "configs/coca_tiny.py:evals=0", "--workdir", str(workdir), *micro,
                 f"--config.model.vision.patch_dropout={value}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "model.vision.patch_dropout" in err[0], err
  assert not workdir.exists()


def test_a_value_that_is_not_a_number_is_a_config_error():
  model = _micro().model.to_dict()
  model["vision"]["patch_dropout"] = "x"  # as a config.json edited by hand might hold it
  with pytest.raises(config.ConfigError, match=r"model.vision.patch_dropout='x' must be a number in \[0, 1\)"):
    models.check(ml_collections.ConfigDict(model))
