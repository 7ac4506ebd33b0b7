"""Two-tower contrastive models with no fusion: CLIP (softmax loss) and SigLIP (sigmoid loss).

Each tower pools its own tokens (`model.vision.pool`, `model.text.pool`) and a
linear head maps the pooled vector to the shared embedding space.

Shape legend: B batch, H/W image size, L text length, E embedding dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.output import Output, l2_normalize
from vlmjax.models.text import TextTransformer
from vlmjax.models.vision import ViT


class TwoTower(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if cfg.vision.pool == "none":
      raise ValueError("model.vision.pool must be cls|gap|map for a two-tower model, got 'none'")
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dense_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    v, t = cfg.vision, cfg.text
    self.vision = ViT(v, cfg.image_size, **kw)
    self.text = TextTransformer(t, **kw)
    self.image_proj = layers.dense(v.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                   std=v.width**-0.5, **dense_kw)
    self.text_proj = layers.dense(t.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                  std=t.width**-0.5, **dense_kw)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32), axes=())
    self.logit_bias = nnx.Param(jnp.asarray(cfg.init_logit_bias, jnp.float32), axes=())

  def encode_image(self, image_BxHxWx3: jax.Array) -> jax.Array:
    return l2_normalize(self.image_proj(self.vision(image_BxHxWx3)[1]))

  def encode_text(self, text_BxL: jax.Array) -> jax.Array:
    return l2_normalize(self.text_proj(self.text(text_BxL)[1]))

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False) -> Output:
    del train
    return Output(image_emb=self.encode_image(image_BxHxWx3), text_emb=self.encode_text(text_BxL),
                  logit_scale=jnp.exp(self.logit_scale[...]), logit_bias=self.logit_bias[...])
