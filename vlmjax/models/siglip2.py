"""SigLIP 2's model (Tschannen et al., 2025): a SigLIP two-tower model plus a LocCa decoder.

The image tower's tokens go two ways: pooled (MAP head) into the sigmoid-contrastive embedding,
and unpooled into a transformer decoder (causal self-attention, cross-attention to every image
token) trained on LocCa's tasks: captioning, referring expressions and grounded captioning
(`vlmjax.data.locca` writes them as token sequences, boxes as text). The decoder is CapPa's
(`Captioner`, here without parallel prediction unless `model.decoder.masked_pred_prob` says so),
so captioning evaluation and decoding work on it unchanged; the paper discards it after training.

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


class SigLIP2(Captioner):
  """`model.vision` (pooled: `map`), `model.text` (the contrastive text tower), `model.decoder` (LocCa's
  decoder: width, depth, heads, mlp_dim, masked_pred_prob, tie_embedding), heads and logit scale/bias
  as the two-tower SigLIP."""

  # `vlmjax info` counts the decoder (used in training only) apart from the towers.
  COUNTED_APART = {"locca_decoder": ("token_embed", "posemb", "mask_token", "decoder")}

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

  def encode_image(self, image_BxHxWx3: jax.Array) -> jax.Array:
    return project(self.image_proj, encoders.encode_vision(self.vision, image_BxHxWx3)[1])

  def encode_text(self, text_BxL: jax.Array) -> jax.Array:
    return project(self.text_proj, self.text(text_BxL)[1])

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, decoder_text: jax.Array | None = None) -> Output:
    """The contrastive embeddings of (image, text) and the decoder's logits on `decoder_text` (LocCa's
    task sequences; without them, the caption `text`). One pass of the image tower serves both."""
    tokens_BxNxC, pooled_BxC = encoders.encode_vision(self.vision, image_BxHxWx3, train=train, rng=rng)
    out = self._decode(tokens_BxNxC, text_BxL if decoder_text is None else decoder_text, train=train, rng=rng)
    return out.replace(image_emb=project(self.image_proj, pooled_BxC), text_emb=self.encode_text(text_BxL),
                       logit_scale=jnp.exp(self.logit_scale[...]),
                       logit_bias=None if self.logit_bias is None else self.logit_bias[...])
