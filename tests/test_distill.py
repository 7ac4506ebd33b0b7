"""SigLIP 2's self-distillation and masked prediction (vlmjax/distill.py): the views, masks and DINO-style
losses against NumPy, the ViT on a smaller grid and with masked patches, the switch at `loss.distill_from`
with the teacher starting as the student, resume exact through the switch, sharded equal to one device,
and one-line errors for configs that cannot work."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, restore_state
from flax import nnx

from vlmjax import config, distill, optim, sharding, train, train_state
from vlmjax.errors import ConfigError

SPEC = os.path.join(ROOT, "configs/siglip2_tiny.py")
SMALL = (("batch_size", "16"), ("model.vision.depth", "1"), ("model.text.depth", "1"), ("model.decoder.depth", "1"),
         ("model.vision.width", "64"), ("model.text.width", "64"), ("model.decoder.width", "64"),
         ("model.embed_dim", "64"), ("model.image_size", "48"), ("loss.distill.local_crops", "2"),
         ("model.distill_head.prototypes", "32"), ("model.distill_head.hidden", "32"),
         ("model.distill_head.bottleneck", "16"), ("total_steps", "4"), ("loss.distill_from", "0.5"),
         ("optim.warmup_steps", "1"), ("log_every", "1"))


def test_views_masks_and_losses_equal_their_definitions():
  image = jax.random.normal(jax.random.key(0), (3, 48, 48, 3))
  whole = distill.local_views(image, jax.random.key(1), 2, 24, (1.0, 1.0))  # the whole image, resized
  want = jax.image.resize(image, (3, 24, 24, 3), "linear", antialias=True)
  np.testing.assert_allclose(whole.reshape(3, 2, 24, 24, 3)[:, 1], want, atol=1e-5)
  views = distill.local_views(image, jax.random.key(1), 4, 16, (0.05, 0.4))
  assert views.shape == (12, 16, 16, 3) and np.isfinite(np.asarray(views)).all()
  mask = np.asarray(distill.patch_mask(jax.random.key(2), 5, 36, 0.5))
  assert (mask.sum(1) == 18).all() and len({m.tobytes() for m in mask}) == 5
  t, s = np.random.default_rng(0).normal(size=(2, 6, 10)), np.random.default_rng(1).normal(size=(2, 6, 10))
  centred = (t - t.mean(axis=(0, 1), keepdims=True)) / 0.04
  p = np.exp(centred - centred.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(distill.teacher_probs(jnp.asarray(t), 0.04, (0, 1)), p, rtol=1e-4, atol=1e-6)
  logq = s / 0.1 - np.log(np.exp(s / 0.1).sum(-1, keepdims=True))
  np.testing.assert_allclose(distill.cross_entropy(jnp.asarray(p), jnp.asarray(s), 0.1), -(p * logq).sum(-1),
                             rtol=1e-5)


def _setup(*overrides):
  cfg = config.load(SPEC, SMALL + overrides)
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  return cfg, s, train_state.init_state(cfg, s)


def test_the_vit_reads_a_smaller_grid_and_masked_patches():
  cfg, s, state = _setup()
  model = nnx.merge(s.graphdef, state.params)
  image = jax.random.normal(jax.random.key(0), (2, 48, 48, 3))
  g_logits, p_logits = jax.jit(lambda p, x: nnx.merge(s.graphdef, p).distill_logits(x))(state.params,
                                                                                       image[:, :32, :32])
  assert g_logits.shape == (2, 32) and p_logits.shape == (2, 16, 32)
  vit = model.vision
  table = np.asarray(vit.posemb[...]).reshape(6, 6, -1)
  small = np.asarray(vit._posemb(4, 4, table.shape[-1])).reshape(4, 4, -1)
  # bilinear with half-pixel centres: output row i reads input (i + 0.5) * 6 / 4 - 0.5
  x = (np.arange(4) + 0.5) * 1.5 - 0.5
  lo, w = np.floor(x).astype(int), x - np.floor(x)
  rows = table[lo] * (1 - w)[:, None, None] + table[np.minimum(lo + 1, 5)] * w[:, None, None]
  want = rows[:, lo] * (1 - w)[None, :, None] + rows[:, np.minimum(lo + 1, 5)] * w[None, :, None]
  np.testing.assert_allclose(small, want, atol=1e-6)
  mask = jnp.zeros((2, 36), bool).at[:, :5].set(True)
  tokens = vit.input_tokens(image, mask_BxN=mask, mask_token_D=model.patch_mask[...])
  np.testing.assert_allclose(tokens[:, :5], np.broadcast_to(model.patch_mask[...] + vit.posemb[:5], (2, 5, 64)),
                             atol=1e-6)
  np.testing.assert_allclose(tokens[:, 5:], vit.input_tokens(image)[:, 5:], atol=1e-6)


def _batches(cfg, s, n):
  from vlmjax.data import pipeline
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed, image_size=cfg.model.image_size,
                        context_length=cfg.model.text.context_length, vocab_size=cfg.model.text.vocab_size,
                        sharding=s.batch_sharding)
  out = [next(data) for _ in range(n)]
  data.close()
  return out


def test_the_terms_switch_on_at_distill_from_the_teacher_starts_as_the_student_and_resume_is_exact(tmp_path):
  """4 steps, the switch at step 2: the terms read 0 before it; a run stopped at the switch holds a teacher
  equal to the student; resumed from there it ends bit-for-bit as the uninterrupted run."""
  cfg, _, _ = _setup(("ckpt_every", "2"), ("ckpt_keep", "2"))
  assert distill.start_step(cfg) == 2
  assert train.train(cfg, str(tmp_path / "full"))["finished"]
  rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
  rows = {r["step"]: r for r in rows if "train/distill_loss" in r}  # step k: the k-th batch
  assert [rows[k]["train/distill_loss"] == 0 and rows[k]["train/masked_loss"] == 0 for k in (1, 2, 3, 4)] == [
      True, True, False, False], rows
  assert rows[3]["train/distill_loss"] > 0 and rows[3]["train/masked_loss"] > 0
  cut = str(tmp_path / "cut")  # the same run stopped at the switch: its step-2 checkpoint (one run fewer)
  shutil.copytree(str(tmp_path / "full"), cut)
  shutil.rmtree(os.path.join(cut, "checkpoints", "4"))
  at_switch = restore_state(cfg, cut)
  assert int(at_switch.step) == 2
  for e, p in zip(jax.tree.leaves(optim.ema_params(at_switch.opt_state)), jax.tree.leaves(at_switch.params)):
    np.testing.assert_array_equal(e, p)
  assert train.train(cfg, cut)["finished"]
  a, b = restore_state(cfg, str(tmp_path / "full")), restore_state(cfg, cut)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(e, p) for e, p in zip(jax.tree.leaves(optim.ema_params(a.opt_state)),
                                                      jax.tree.leaves(a.params)))  # then it trails


def test_a_step_with_the_terms_on_a_data_fsdp_tensor_mesh_equals_one_device():
  cfg = config.load(SPEC, SMALL + (("loss.distill_from", "0.1"),))  # on from step 0
  s1 = train_state.setup(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
  host = jax.device_get(train_state.init_state(cfg, s1))
  batch = jax.device_get(_batches(cfg, s1, 1)[0])
  out1, m1 = train.compile_train_step(cfg, s1)(jax.device_put(host, s1.state_shardings),
                                                jax.device_put(batch, s1.batch_sharding))
  mesh = config.load(SPEC, SMALL + (("loss.distill_from", "0.1"), ("mesh.data", "2"), ("mesh.fsdp", "2"),
                                    ("mesh.tensor", "2")))
  s8 = train_state.setup(mesh, sharding.make_mesh(mesh.mesh))
  out8, m8 = train.compile_train_step(mesh, s8)(jax.device_put(host, s8.state_shardings),
                                                 jax.device_put(batch, s8.batch_sharding))
  assert float(m1["distill_loss"]) > 0 and float(m1["masked_loss"]) > 0
  for key in ("loss", "distill_loss", "masked_loss", "caption_loss", "contrastive_loss"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), out8.params, out1.params)


@pytest.mark.parametrize("overrides, message", [
    ((("loss.distill_from", "0.0"),), r"distill_from=0.0 must be a fraction of training in \(0, 1\]"),
    ((("loss.distill_from", "1.5"),), r"distill_from=1.5 must be"),
    ((("loss.distill.local_size", "72"),), "a crop larger than the image cannot be taken"),
    ((("optim.ema_decay", "0.0"),), "teacher is the EMA of the parameters"),
    ((("model.distill_head.prototypes", "0"),), "need a model with distillation heads"),
    ((("optim.microbatches", "2"),), "do not run in microbatches yet"),
    ((("loss.distill.mask_ratio", "1.0"),), r"mask_ratio=1.0 must lie in \(0, 1\)"),
])
def test_configs_that_cannot_work_are_one_line_errors(overrides, message):
  cfg = config.load(SPEC, overrides)
  with pytest.raises(ConfigError, match=message) as e:
    distill.check(cfg)
  assert "\n" not in str(e.value)
