"""SigLIP 2's model (Tschannen et al., 2025): a SigLIP two-tower model plus a LocCa decoder.

The image tower's tokens go two ways: pooled (MAP head) into the sigmoid-contrastive embedding,
and unpooled into a transformer decoder (causal self-attention, cross-attention to every image
token) trained on LocCa's tasks: captioning, referring expressions and grounded captioning
(`vlmjax.data.locca` writes them as token sequences, boxes as text). The decoder is CapPa's
(`Captioner`, here without parallel prediction unless `model.decoder.masked_pred_prob` says so),
so captioning evaluation and decoding work on it unchanged; the paper discards it after training.

With `model.distill_head.prototypes` > 0 it also has SigLIP 2's self-distillation heads (SILC's on
the pooled embedding of an image or a local view, TIPS' on every patch token) and the mask token
that replaces masked patch embeddings: `distill_logits` serves both the student and, with the EMA
parameters, the teacher (`vlmjax/distill.py`). They too are training-only.

Shape legend: B batch, H/W image size, L text length, N image tokens, C image width, E embedding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import encoders, layers
from vlmjax.models.captioner import Captioner
from vlmjax.models.output import Output
from vlmjax.models.two_tower import head, project


class DistillHead(nnx.Module):
  """DINO's projection head: an MLP to a `bottleneck`, L2-normalised, then a linear map to `prototypes`
  logits (without DINO's weight normalisation of that last layer)."""

  def __init__(self, din: int, hidden: int, bottleneck: int, prototypes: int, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = layers.dense(din, hidden, ("embed", "mlp"), **kw)
    self.fc2 = layers.dense(hidden, bottleneck, ("mlp", "embed"), **kw)
    self.prototypes = layers.dense(bottleneck, prototypes, ("embed", None), use_bias=False, **kw)

  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    h = self.fc2(jax.nn.gelu(self.fc1(x_BxD)))
    h = h * jax.lax.rsqrt(jnp.sum(jnp.square(h.astype(jnp.float32)), -1, keepdims=True) + 1e-12).astype(h.dtype)
    return self.prototypes(h)


class SigLIP2(Captioner):
  """`model.vision` (pooled: `map`), `model.text` (the contrastive text tower), `model.decoder` (LocCa's
  decoder: width, depth, heads, mlp_dim, masked_pred_prob, tie_embedding), heads and logit scale/bias
  as the two-tower SigLIP."""

  # `vlmjax info` counts the decoder (used in training only) apart from the towers.
  COUNTED_APART = {"locca_decoder": ("token_embed", "posemb", "mask_token", "decoder"),
                   "distill_heads": ("global_head", "patch_head", "patch_mask")}

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if cfg.vision.pool == "none":
      raise ValueError("model.vision.pool must be cls|gap|map for SigLIP 2's contrastive embedding, got 'none'")
    super().__init__(cfg, rngs=rngs)
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, scan=cfg.scan, act=cfg.act, norm_eps=cfg.norm_eps,
              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dense_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.text = encoders.build_text(cfg.text, **kw)
    self.image_proj = head(cfg.image_proj, cfg.vision.width, cfg.embed_dim, "image", **dense_kw)
    self.text_proj = head(cfg.text_proj, cfg.text.width, cfg.embed_dim, "text", **dense_kw)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32), axes=())
    self.logit_bias = (None if cfg.init_logit_bias is None
                       else nnx.Param(jnp.asarray(cfg.init_logit_bias, jnp.float32), axes=()))
    h, d = cfg.distill_head, cfg.vision.width
    make_head = lambda: DistillHead(d, h.hidden, h.bottleneck, h.prototypes, **dense_kw)
    self.global_head = make_head() if h.prototypes else None
    self.patch_head = make_head() if h.prototypes else None
    self.patch_mask = (nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d,), param_dtype), axes=("embed",))
                       if h.prototypes else None)

  def distill_logits(self, image_BxHxWx3: jax.Array, mask_BxN: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """(global logits [B, K] from the pooled embedding, patch logits [B, N, K] from the N patch tokens)
    of the self-distillation heads, for an image of any size the patch divides (local views are
    smaller); `mask_BxN` replaces those patch embeddings by the mask token (masked prediction)."""
    if self.global_head is None:
      raise ValueError("SigLIP2.distill_logits needs model.distill_head.prototypes > 0")
    tokens_BxNxC, pooled_BxC = self.vision(image_BxHxWx3, mask_BxN=mask_BxN,
                                           mask_token_D=None if mask_BxN is None else self.patch_mask[...])
    n = (image_BxHxWx3.shape[1] // self.vision.patch) * (image_BxHxWx3.shape[2] // self.vision.patch)
    return self.global_head(pooled_BxC), self.patch_head(tokens_BxNxC[:, -n:])  # a class token dropped

  def encode_image(self, image_BxHxWx3: jax.Array) -> jax.Array:
    return project(self.image_proj, encoders.encode_vision(self.vision, image_BxHxWx3)[1])

  def encode_text(self, text_BxL: jax.Array) -> jax.Array:
    return project(self.text_proj, self.text(text_BxL)[1])

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, decoder_text: jax.Array | None = None) -> Output:
    """The contrastive embeddings of (image, text) and the decoder's logits on `decoder_text` (LocCa's
    task sequences; without them, the caption `text`). One pass of the image tower serves both."""
    ctx_BxNxC, pooled_BxC = encoders.encode_vision_context(self.vision, image_BxHxWx3, train=train, rng=rng)
    out = self._decode(ctx_BxNxC, text_BxL if decoder_text is None else decoder_text, train=train, rng=rng)
    return out.replace(image_emb=project(self.image_proj, pooled_BxC), text_emb=self.encode_text(text_BxL),
                       logit_scale=jnp.exp(self.logit_scale[...]),
                       logit_bias=None if self.logit_bias is None else self.logit_bias[...])
