"""Vision Transformer image encoder with `cls | gap | map | none` pooling.

Shape legend: B batch, H/W image height/width, P patch pixels (p*p*3),
N image tokens, D width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.fusion import AttentionPooler

POOLS = ("cls", "gap", "map", "none")


class ViT(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, image_size: int, *, attention: str, remat: str,
               dtype, param_dtype, rngs: nnx.Rngs):
    if cfg.pool not in POOLS:
      raise ValueError(f"model.vision.pool must be one of {'|'.join(POOLS)}, got {cfg.pool!r}")
    if image_size % cfg.patch_size:
      raise ValueError(f"image size {image_size} is not divisible by patch size {cfg.patch_size}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch, self.pool, self.remat = cfg.patch_size, cfg.pool, remat
    self.grid = image_size // cfg.patch_size
    d = cfg.width
    self.embed = layers.dense(3 * cfg.patch_size**2, d, ("patch", "embed"), **kw)
    n = self.grid**2
    if cfg.posemb == "learn":
      self.posemb = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (n, d), param_dtype),
                              axes=(None, "embed"))
    elif cfg.posemb == "sincos2d":
      self.posemb = None  # fixed; computed in __call__ so the state holds only trainable parameters
    else:
      raise ValueError(f"model.vision.posemb must be learn|sincos2d, got {cfg.posemb!r}")
    self.cls = (nnx.Param(jnp.zeros((1, d), param_dtype), axes=(None, "embed"))
                if cfg.pool == "cls" else None)
    self.blocks = nnx.List([layers.Block(d, cfg.heads, cfg.mlp_dim, impl=attention, **kw)
                            for _ in range(cfg.depth)])
    self.ln = layers.layer_norm(d, **kw)
    self.map = AttentionPooler(d, d, cfg.heads, 1, attention=attention, **kw) if cfg.pool == "map" else None

  def __call__(self, image_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Returns (tokens_BxNxD, pooled_BxD or None when pool is `none`)."""
    B, H, W, C = image_BxHxWx3.shape
    p = self.patch
    x = image_BxHxWx3.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
    x_BxNxD = self.embed(x.reshape(B, (H // p) * (W // p), p * p * C))
    posemb_NxD = (layers.sincos_2d(self.grid, self.grid, x_BxNxD.shape[-1]) if self.posemb is None
                  else self.posemb[...])
    x_BxNxD = x_BxNxD + posemb_NxD.astype(x_BxNxD.dtype)
    if self.cls is not None:
      cls = jnp.broadcast_to(self.cls[...].astype(x_BxNxD.dtype), (B, 1, x_BxNxD.shape[-1]))
      x_BxNxD = jnp.concatenate([cls, x_BxNxD], axis=1)
    x_BxNxD = layers.run_blocks(self.blocks, x_BxNxD, remat=self.remat)
    x_BxNxD = self.ln(x_BxNxD)
    if self.pool == "cls":
      return x_BxNxD[:, 1:], x_BxNxD[:, 0]
    if self.pool == "gap":
      return x_BxNxD, x_BxNxD.mean(axis=1)
    if self.pool == "map":
      return x_BxNxD, self.map(x_BxNxD)[:, 0]
    return x_BxNxD, None
