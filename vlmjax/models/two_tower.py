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

from vlmjax.models import encoders, layers
from vlmjax.models.output import Output, l2_normalize


HEADS = ("linear", "linear_bias", "none")


def head(kind: str, din: int, dout: int, tower: str, **kw) -> nnx.Linear | None:
  """The map from a tower's pooled vector to the shared embedding: linear (CLIP), with bias (SigLIP's
  text head), or none (SigLIP's image tower, whose MAP head already has the embedding width)."""
  if kind not in HEADS:
    raise ValueError(f"model.{tower}_proj must be one of {'|'.join(HEADS)}, got {kind!r}")
  if kind == "none":
    if din != dout:
      raise ValueError(f"model.{tower}_proj='none' needs the {tower} width ({din}) to equal embed_dim ({dout})")
    return None
  return layers.dense(din, dout, ("embed", None), use_bias=kind == "linear_bias", std=din**-0.5, **kw)


def project(head: nnx.Linear | None, x: jax.Array) -> jax.Array:
  return l2_normalize(x if head is None else head(x))


class TwoTower(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if cfg.vision.pool == "none":
      raise ValueError("model.vision.pool must be cls|gap|map for a two-tower model, got 'none'")
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, scan=cfg.scan, act=cfg.act, norm_eps=cfg.norm_eps,
              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dense_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    v, t = cfg.vision, cfg.text
    self.vision = encoders.build_vision(v, cfg.image_size, **kw)
    self.text = encoders.build_text(t, **kw)
    self.image_proj = head(cfg.image_proj, v.width, cfg.embed_dim, "image", **dense_kw)
    self.text_proj = head(cfg.text_proj, t.width, cfg.embed_dim, "text", **dense_kw)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32), axes=())
    self.logit_bias = (None if cfg.init_logit_bias is None  # CLIP has none; SigLIP starts it at -10
                       else nnx.Param(jnp.asarray(cfg.init_logit_bias, jnp.float32), axes=()))

  def encode_image(self, image_BxHxWx3: jax.Array | dict, *, train: bool = False,
                   rng: jax.Array | None = None) -> jax.Array:
    """In training (`train`, `rng`) the vision tower may see only some patches (patch dropout). The image
    is what the tower reads: [B, H, W, 3], or NaFlex's {"patches", "shapes", "mask"} (`models.naflex`)."""
    pooled_BxD = encoders.encode_vision(self.vision, image_BxHxWx3, train=train, rng=rng)[1]
    return project(self.image_proj, pooled_BxD)

  def encode_text(self, text_BxL: jax.Array) -> jax.Array:
    return project(self.text_proj, self.text(text_BxL)[1])

  def __call__(self, image_BxHxWx3: jax.Array | dict, text_BxL: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Output:
    return Output(image_emb=self.encode_image(image_BxHxWx3, train=train, rng=rng),
                  text_emb=self.encode_text(text_BxL),
                  logit_scale=jnp.exp(self.logit_scale[...]), logit_bias=None if self.logit_bias is None else self.logit_bias[...])
