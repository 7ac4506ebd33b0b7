import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlmjax import config, models, sharding, train_state

from conftest import ROOT


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_builds_abstractly(path):
  cfg = config.load(path)
  mesh = sharding.make_mesh(cfg.mesh)
  s = train_state.setup(cfg, mesh)  # jax.eval_shape under the hood: nothing is allocated
  leaves = jax.tree.leaves(s.abstract_state.params)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert jax.tree.structure(s.state_shardings.params) == jax.tree.structure(s.abstract_state.params)


def _model_and_batch(cfg, batch=4, seed=0):
  model = models.build(cfg.model, nnx.Rngs(0))
  rng = np.random.default_rng(seed)
  S, L = cfg.model.image_size, cfg.model.text.context_length
  image = rng.normal(size=(batch, S, S, 3)).astype(np.float32)
  text = rng.integers(3, cfg.model.text.vocab_size, size=(batch, L)).astype(np.int32)
  text[:, 0] = 1
  text[:, L // 2:] = 0  # padded tail
  return model, image, text


@pytest.mark.parametrize("overrides", [(), (("model.pooler.mode", "cascade"), ("model.vision.posemb", "sincos2d"))])
def test_coca_shapes_norms_finite(micro_cfg, overrides):
  cfg = micro_cfg(*overrides)
  model, image, text = _model_and_batch(cfg)
  out = model(image, text, train=True)
  E, V, L = cfg.model.embed_dim, cfg.model.text.vocab_size, cfg.model.text.context_length
  assert out.image_emb.shape == (4, E) and out.text_emb.shape == (4, E)
  assert out.caption_logits.shape == (4, L, V)
  np.testing.assert_allclose(jnp.linalg.norm(out.image_emb, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out.text_emb, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out.logit_scale, cfg.model.init_logit_scale, rtol=1e-5)
  assert all(np.isfinite(np.asarray(x)).all() for x in (out.image_emb, out.text_emb, out.caption_logits))
  np.testing.assert_allclose(model.encode_image(image), out.image_emb, atol=1e-6)
  np.testing.assert_allclose(model.encode_text(text), out.text_emb, atol=1e-6)


def test_caption_logits_are_causal(micro_cfg):
  cfg = micro_cfg()
  model, image, text = _model_and_batch(cfg)
  t = 5
  changed = text.copy()
  changed[:, t + 1:cfg.model.text.context_length // 2] = 7  # only tokens after position t
  a = model(image, text).caption_logits
  b = model(image, changed).caption_logits
  np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-5)
  assert not np.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("loss", ["sigmoid", "softmax"])
def test_two_tower_shapes_and_init(loss):
  small = [("model.vision.width", "32"), ("model.vision.depth", "1"), ("model.vision.heads", "2"),
           ("model.text.width", "32"), ("model.text.depth", "1"), ("model.text.heads", "2"),
           ("model.embed_dim", "16")]
  cfg = config.load(os.path.join(ROOT, f"configs/siglip_tiny.py:loss={loss}"), small)
  model, image, text = _model_and_batch(cfg)
  out = model(image, text)
  assert out.image_emb.shape == (4, 16) and out.text_emb.shape == (4, 16) and out.caption_logits is None
  np.testing.assert_allclose(jnp.linalg.norm(out.text_emb, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out.logit_scale, 10.0 if loss == "sigmoid" else 1 / 0.07, rtol=1e-5)
  if loss == "sigmoid":
    np.testing.assert_allclose(out.logit_bias, -10.0)
  else:
    assert out.logit_bias is None


def test_gap_pooling_averages_the_patches_not_the_class_token():
  from vlmjax import presets
  from vlmjax.models.vision import ViT
  v = presets.vit_config(patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, pool="gap", cls_token=True)
  vit = ViT(v, 32, norm_eps=1e-6, act="gelu", dtype=jnp.float32, param_dtype=jnp.float32, remat="none",
            scan=False, attention="xla", rngs=nnx.Rngs(0))
  tokens, pooled = vit(jax.random.normal(jax.random.key(0), (2, 32, 32, 3)))
  assert tokens.shape == (2, 17, 32)
  np.testing.assert_allclose(pooled, tokens[:, 1:].mean(axis=1), rtol=1e-6)


def test_tied_vocabulary_head_uses_the_input_embedding(micro_cfg):
  untied = models.build(micro_cfg().model, nnx.Rngs(0))
  cfg = micro_cfg(("model.decoder.tie_embedding", "true"))
  model, image, text = _model_and_batch(cfg)
  assert model.decoder.head is None
  n = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m)))
  assert n(untied) - n(model) == cfg.model.text.width * cfg.model.text.vocab_size
  logits = model(image, text).caption_logits
  assert logits.shape == (4, cfg.model.text.context_length, cfg.model.text.vocab_size)
  emb = model.text.token_embed.embedding
  emb[...] = emb[...] * 2.0
  assert not np.allclose(model(image, text).caption_logits, logits)
  tokens, _ = model.text(text)
  _, caption = model._image(image)
  x = model.decoder.ln(_decoder_blocks(model.decoder, tokens, caption))
  np.testing.assert_allclose(model(image, text).caption_logits, x @ emb[...].T, rtol=1e-4, atol=1e-4)


def _decoder_blocks(decoder, x, ctx):
  for block in decoder.blocks.layers:
    x = block(x, causal=True, ctx_BxSxC=ctx)
  return x


def test_abstract_model_has_the_real_structure(micro_cfg):
  cfg = micro_cfg()
  real = nnx.to_pure_dict(nnx.state(models.build(cfg.model, nnx.Rngs(3))))
  fake = nnx.to_pure_dict(nnx.state(models.abstract(cfg.model)))
  assert jax.tree.structure(real) == jax.tree.structure(fake)
  jax.tree.map(lambda r, f: (r.shape, r.dtype) == (f.shape, f.dtype) or pytest.fail(f"{r.shape} {f.shape}"),
               real, fake)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(fake))


def test_unknown_remat_policy_is_an_error(micro_cfg):
  """(Remat itself is checked against no remat in test_scan_equals_unrolled.)"""
  with pytest.raises(ValueError, match="model.remat must be one of"):
    models.build(micro_cfg(("model.remat", "some")).model, nnx.Rngs(0))


def _stacked(params):
  """Unrolled parameters (`layers/0/...`, `layers/1/...`) -> scanned ones (one `layers` with a leading axis)."""
  if not isinstance(params, dict):
    return params
  if "layers" in params and 0 in params["layers"]:
    blocks = [params["layers"][i] for i in sorted(params["layers"])]
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  return {k: _stacked(v) for k, v in params.items()}


def test_scan_equals_unrolled(micro_cfg):
  """Scanned blocks (here also rematerialised) give the unrolled model's loss and gradients."""
  depth = [(f"model.{t}.depth", "2") for t in ("vision", "text", "decoder")]
  unrolled, image, text = _model_and_batch(micro_cfg(*depth))
  scanned = models.build(micro_cfg(*depth, ("model.scan", "true"), ("model.remat", "full")).model, nnx.Rngs(1))
  state = nnx.state(scanned)
  assert state["vision"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
  nnx.replace_by_pure_dict(state, _stacked(nnx.to_pure_dict(nnx.state(unrolled))))
  nnx.update(scanned, state)
  from vlmjax import losses
  cfg = micro_cfg()

  def loss_and_grads(model):
    graphdef, params = nnx.split(model)
    loss = lambda p: losses.composite(nnx.merge(graphdef, p)(image, text), {"text": text}, cfg.loss)[0]
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return value, nnx.to_pure_dict(grads)
  (v0, g0), (v1, g1) = loss_and_grads(unrolled), loss_and_grads(scanned)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, _stacked(g0))
  # The stacked axis is the logical axis `layers`, never sharded by default.
  mesh = sharding.make_mesh(micro_cfg(("mesh.fsdp", "2"), ("mesh.tensor", "2")).mesh)
  sh = sharding.param_shardings(nnx.state(scanned), cfg.mesh.rules, mesh)
  assert sh["text"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


def _captioner(masked="0.75"):
  small = [("model.vision.width", "32"), ("model.vision.depth", "1"), ("model.vision.heads", "2"),
           ("model.vision.mlp_dim", "64"), ("model.decoder.width", "32"), ("model.decoder.depth", "1"),
           ("model.decoder.heads", "2"), ("model.decoder.mlp_dim", "64")]
  return config.load(os.path.join(ROOT, f"configs/cappa_tiny.py:masked={masked}"), small)


def test_captioner_autoregressive_is_causal_and_parallel_ignores_the_text():
  cfg = _captioner()
  model, image, text = _model_and_batch(cfg)
  L, V = cfg.model.text.context_length, cfg.model.text.vocab_size
  a = model(image, text).caption_logits
  assert a.shape == (4, L, V) and np.isfinite(np.asarray(a)).all()
  changed = text.copy()
  changed[:, 6:L // 2] = 7
  b = model(image, changed).caption_logits
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)
  assert not np.allclose(a[:, 6:], b[:, 6:])
  np.testing.assert_allclose(model.caption_logits(model.caption_context(image), text), a, atol=1e-6)
  # masked_pred_prob = 1: every example is predicted in parallel from mask tokens only.
  model.masked_pred_prob = 1.0
  p = model(image, text, train=True, rng=jax.random.key(0)).caption_logits
  q = model(image, changed, train=True, rng=jax.random.key(1)).caption_logits
  np.testing.assert_allclose(p, q, atol=1e-5)
  assert not np.allclose(p, a, atol=1e-3)
  # masked_pred_prob = 0.5: each example is one or the other.
  model.masked_pred_prob = 0.5
  m = model(image, text, train=True, rng=jax.random.key(3)).caption_logits
  parallel = [np.allclose(m[i], p[i], atol=1e-5) for i in range(4)]
  assert all(par or np.allclose(m[i], a[i], atol=1e-5) for i, par in enumerate(parallel))
  with pytest.raises(ValueError, match="needs `rng`"):
    model(image, text, train=True)


@pytest.mark.parametrize("name, scan", [("coca", False), ("coca", True), ("captioner", False)])
def test_kv_cached_decoding_equals_full_recompute(micro_cfg, name, scan):
  """Feeding a prefix one token at a time through the KV cache gives the full forward's logits."""
  cfg = micro_cfg(("model.scan", str(scan))) if name == "coca" else _captioner()
  model, image, text = _model_and_batch(cfg)
  T = 7
  ctx = model.caption_context(image)
  full_BxTxV = model.caption_logits(ctx, text[:, :T])
  cache = model.decode_init(ctx, max_len=T)
  for t in range(T):
    logits_BxV, cache = model.decode_step(cache, jnp.asarray(text[:, t]), jnp.int32(t))
    np.testing.assert_allclose(logits_BxV, full_BxTxV[:, t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["coca", "coca_tied", "captioner"])
def test_chunked_caption_loss_equals_full_logits(micro_cfg, name):
  from vlmjax import losses
  cfg = {"coca": micro_cfg(), "coca_tied": micro_cfg(("model.decoder.tie_embedding", "true")),
         "captioner": _captioner("0.5")}[name]
  model, image, text = _model_and_batch(cfg)
  out = model(image, text, train=True, rng=jax.random.key(0))
  np.testing.assert_allclose(out.caption_features @ out.caption_kernel, out.caption_logits, rtol=1e-4, atol=1e-4)
  full = losses.composite(out, {"text": text}, cfg.loss)[0]
  cfg.loss.caption_chunk = 6
  np.testing.assert_allclose(losses.composite(out, {"text": text}, cfg.loss)[0], full, rtol=1e-5)
