import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlmjax import losses
from vlmjax.models import Output


def np_log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_softmax_contrastive(img, txt, scale):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
  n = len(img)
  i2t = -np_log_softmax(logits, 1)[np.arange(n), np.arange(n)].mean()
  t2i = -np_log_softmax(logits, 0)[np.arange(n), np.arange(n)].mean()
  return (i2t + t2i) / 2


def np_sigmoid_contrastive(img, txt, scale, bias):
  logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T + bias
  z = 2 * np.eye(len(img)) - 1
  return np.logaddexp(0.0, -z * logits).sum() / len(img)  # -log sigmoid(t) = log(1 + exp(-t))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def pairs(seed, n, e=8):
  rng = np.random.default_rng(seed)
  return (unit(rng.normal(size=(n, e))).astype(np.float32), unit(rng.normal(size=(n, e))).astype(np.float32))


def test_softmax_contrastive_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = unit(rng.normal(size=(12, 8))).astype(np.float32), unit(rng.normal(size=(12, 8))).astype(np.float32)
  got = losses.softmax_contrastive(img, txt, jnp.float32(14.3))
  np.testing.assert_allclose(got, np_softmax_contrastive(img, txt, 14.3), rtol=1e-5)
  # Perfectly aligned, well separated embeddings give a loss near zero.
  eye = np.eye(8, dtype=np.float32)
  assert losses.softmax_contrastive(eye, eye, jnp.float32(100.0)) < 1e-6


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_caption_xent_matches_numpy(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  mask = rng.random((3, 5)) > 0.3
  logp = np_log_softmax(logits.astype(np.float64), -1)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  nll = (1 - smoothing) * nll - smoothing * logp.mean(-1)
  want = (nll * mask).sum() / mask.sum()
  got = losses.caption_xent(logits, targets, mask, label_smoothing=smoothing)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_caption_xent_all_masked_is_zero_not_nan():
  assert losses.caption_xent(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), bool)) == 0


def test_composite_weights_and_shift():
  rng = np.random.default_rng(2)
  img, txt = unit(rng.normal(size=(4, 6))).astype(np.float32), unit(rng.normal(size=(4, 6))).astype(np.float32)
  logits = rng.normal(size=(4, 5, 7)).astype(np.float32)
  text = np.array([[1, 5, 6, 2, 0]] * 4, np.int32)
  out = Output(image_emb=img, text_emb=txt, logit_scale=jnp.float32(10.0), caption_logits=logits)
  cfg = ml_collections.ConfigDict(dict(contrastive="softmax", contrastive_weight=0.5, caption_weight=2.0,
                                       label_smoothing=0.0, z_loss=0.0, caption_chunk=0))
  loss, metrics = losses.composite(out, {"text": text}, cfg)
  con = np_softmax_contrastive(img, txt, 10.0)
  logp = np_log_softmax(logits[:, :-1].astype(np.float64), -1)
  targets = text[:, 1:]
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  cap = (nll * (targets != 0)).sum() / (targets != 0).sum()
  np.testing.assert_allclose(metrics["contrastive_loss"], con, rtol=1e-5)
  np.testing.assert_allclose(metrics["caption_loss"], cap, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * con + 2.0 * cap, rtol=1e-5)


def test_sharded_softmax_contrastive_equals_single_device():
  rng = np.random.default_rng(3)
  img, txt = unit(rng.normal(size=(16, 8))).astype(np.float32), unit(rng.normal(size=(16, 8))).astype(np.float32)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  grad = jax.value_and_grad(losses.softmax_contrastive, argnums=(0, 1))
  (v1, (gi1, gt1)) = grad(img, txt, 10.0)
  (v8, (gi8, gt8)) = jax.jit(grad)(jax.device_put(img, sh), jax.device_put(txt, sh), 10.0)
  np.testing.assert_allclose(v8, v1, rtol=1e-6)
  np.testing.assert_allclose(gi8, gi1, atol=1e-6)
  np.testing.assert_allclose(gt8, gt1, atol=1e-6)


@pytest.mark.parametrize("scale,bias", [(10.0, -10.0), (1.0, 0.0), (30.0, 5.0)])
def test_sigmoid_contrastive_matches_numpy(scale, bias):
  img, txt = pairs(4, 12)
  got = losses.sigmoid_contrastive(img, txt, jnp.float32(scale), jnp.float32(bias))
  np.testing.assert_allclose(got, np_sigmoid_contrastive(img, txt, scale, bias), rtol=1e-5)
  # Aligned, well separated embeddings with a strongly negative bias give a loss near zero.
  eye = np.eye(8, dtype=np.float32)
  assert losses.sigmoid_contrastive(eye, eye, jnp.float32(100.0), jnp.float32(-50.0)) < 1e-6


def _check_ring_equals_dense(mesh, axes, batch_spec, seed):
  img, txt = pairs(seed, 16)
  scale, bias = jnp.float32(10.0), jnp.float32(-3.0)
  dense = jax.value_and_grad(losses.sigmoid_contrastive, argnums=(0, 1, 2, 3))
  ring = jax.jit(jax.value_and_grad(
      functools.partial(losses.sigmoid_contrastive_ring, mesh=mesh, axes=axes), argnums=(0, 1, 2, 3)))
  sh = jax.sharding.NamedSharding(mesh, batch_spec)
  v1, g1 = dense(img, txt, scale, bias)
  vr, gr = ring(jax.device_put(img, sh), jax.device_put(txt, sh), scale, bias)
  np.testing.assert_allclose(vr, np_sigmoid_contrastive(img, txt, 10.0, -3.0), rtol=1e-5)
  np.testing.assert_allclose(vr, v1, rtol=1e-6)
  for name, a, b in zip(("image_emb", "text_emb", "logit_scale", "logit_bias"), gr, g1):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
  assert gr[0].shape == img.shape and gr[2].shape == ()


def test_sigmoid_ring_equals_dense_8_devices():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  # "fsdp" (a default axis) is absent from this mesh and is ignored.
  _check_ring_equals_dense(mesh, ("data", "fsdp"), jax.sharding.PartitionSpec("data"), seed=5)


def test_sigmoid_ring_equals_dense_2_axis_mesh():
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  _check_ring_equals_dense(mesh, ("data", "fsdp"), jax.sharding.PartitionSpec(("data", "fsdp")), seed=6)


def test_sigmoid_ring_ignores_size_one_and_other_axes():
  # fsdp has size 1; tensor is not a batch axis, so the inputs are replicated over it.
  mesh = jax.make_mesh((4, 1, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  _check_ring_equals_dense(mesh, ("data", "fsdp"), jax.sharding.PartitionSpec("data"), seed=7)


def test_sigmoid_ring_rejects_indivisible_batch():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  img, txt = pairs(8, 12)
  with pytest.raises(ValueError, match="not divisible"):
    losses.sigmoid_contrastive_ring(img, txt, 10.0, -10.0, mesh=mesh)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_caption_xent_z_loss_matches_numpy(z_loss):
  rng = np.random.default_rng(9)
  logits = 3 * rng.normal(size=(3, 5, 11)).astype(np.float32)
  targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  mask = rng.random((3, 5)) > 0.3
  x = logits.astype(np.float64)
  lse = x.max(-1) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
  nll = lse - np.take_along_axis(x, targets[..., None], -1)[..., 0]
  want = ((nll + z_loss * lse**2) * mask).sum() / mask.sum()
  got = losses.caption_xent(logits, targets, mask, z_loss=z_loss)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_composite_sigmoid():
  img, txt = pairs(10, 4, 6)
  logits = np.random.default_rng(11).normal(size=(4, 5, 7)).astype(np.float32)
  text = np.array([[1, 5, 6, 2, 0]] * 4, np.int32)
  out = Output(image_emb=img, text_emb=txt, logit_scale=jnp.float32(10.0), logit_bias=jnp.float32(-10.0),
               caption_logits=logits)
  cfg = ml_collections.ConfigDict(dict(contrastive="sigmoid", contrastive_weight=1.5, caption_weight=0.0,
                                       label_smoothing=0.0, z_loss=0.0, caption_chunk=0))
  loss, metrics = losses.composite(out, {"text": text}, cfg)
  con = np_sigmoid_contrastive(img, txt, 10.0, -10.0)
  np.testing.assert_allclose(metrics["contrastive_loss"], con, rtol=1e-5)
  np.testing.assert_allclose(loss, 1.5 * con, rtol=1e-5)
  assert metrics["logit_scale"] == 10.0 and metrics["logit_bias"] == -10.0
  assert "caption_loss" not in metrics
  # A model without a bias cannot be trained with the sigmoid loss.
  with pytest.raises(ValueError, match="logit_bias"):
    losses.composite(Output(image_emb=img, text_emb=txt, logit_scale=jnp.float32(10.0)), {"text": text}, cfg)
  cfg.contrastive = "sigmod"
  with pytest.raises(ValueError, match="softmax|sigmoid|none"):
    losses.composite(out, {"text": text}, cfg)


@pytest.mark.parametrize("chunk, smoothing, z", [(4, 0.0, 0.0), (3, 0.1, 1e-3)])
def test_chunked_caption_xent_equals_full_in_value_and_gradients(chunk, smoothing, z):
  rng = np.random.default_rng(0)
  B, L, D, V = 4, 10, 8, 37
  hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(D, V)) * 0.3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(B, L)), jnp.int32)
  mask = jnp.asarray(rng.random((B, L)) < 0.7)
  full = lambda h, k: losses.caption_xent(h @ k, targets, mask, label_smoothing=smoothing, z_loss=z)
  chunked = lambda h, k: losses.caption_xent_chunked(h, k, targets, mask, chunk=chunk, label_smoothing=smoothing,
                                                     z_loss=z)
  np.testing.assert_allclose(chunked(hidden, kernel), full(hidden, kernel), rtol=1e-5)
  g_full, g_chunk = jax.grad(full, argnums=(0, 1))(hidden, kernel), jax.grad(chunked, argnums=(0, 1))(hidden, kernel)
  for a, b in zip(g_chunk, g_full):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
