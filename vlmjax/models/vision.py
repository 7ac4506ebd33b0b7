"""Vision Transformer image encoder with `cls | gap | map | none` pooling.

Shape legend: B batch, H/W image height/width, P patch pixels (p*p*3),
N image tokens, D width.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.fusion import AttentionPooler

POOLS = ("cls", "gap", "map", "none")


class ViT(nnx.Module):
  """Patch embedding (+ optional class token) -> position embedding -> transformer blocks.

  Layout knobs, so published checkpoints map one to one: `patch_bias` (big_vision,
  SigLIP: yes; OpenAI/open_clip CLIP: no), `cls_token` (a learned token prepended, with
  its own position embedding), `ln_pre` (a norm before the blocks, as CLIP), and
  `final_norm` (a norm after them; open_clip's CoCa has none, its pooler normalises).
  """

  def __init__(self, cfg: ml_collections.ConfigDict, image_size: int, *, attention: str, remat: str,
               scan: bool, act: str, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    if cfg.pool not in POOLS:
      raise ValueError(f"model.vision.pool must be one of {'|'.join(POOLS)}, got {cfg.pool!r}")
    if cfg.pool == "cls" and not cfg.cls_token:
      raise ValueError("model.vision.pool='cls' needs model.vision.cls_token=True")
    if image_size % cfg.patch_size:
      raise ValueError(f"image size {image_size} is not divisible by patch size {cfg.patch_size}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.patch, self.pool = cfg.patch_size, cfg.pool
    self.grid = image_size // cfg.patch_size
    d = cfg.width
    self.embed = layers.dense(3 * cfg.patch_size**2, d, ("patch", "embed"), use_bias=cfg.patch_bias, **kw)
    self.cls = (nnx.Param(nnx.initializers.normal(d**-0.5)(rngs.params(), (1, d), param_dtype),
                          axes=(None, "embed")) if cfg.cls_token else None)
    n = self.grid**2 + (1 if cfg.cls_token else 0)
    if cfg.posemb == "learn":
      self.posemb = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (n, d), param_dtype),
                              axes=(None, "embed"))
    elif cfg.posemb == "sincos2d":
      self.posemb = None  # fixed; computed in __call__ so the state holds only trainable parameters
    else:
      raise ValueError(f"model.vision.posemb must be learn|sincos2d, got {cfg.posemb!r}")
    self.ln_pre = layers.layer_norm(d, eps=norm_eps, **kw) if cfg.ln_pre else None
    self.blocks = layers.Stack(lambda r: layers.Block(d, cfg.heads, cfg.mlp_dim, impl=attention, act=act,
                                                      norm_eps=norm_eps, dtype=dtype, param_dtype=param_dtype,
                                                      rngs=r),
                               cfg.depth, scan=scan, remat=remat, rngs=rngs)
    self.ln = layers.layer_norm(d, eps=norm_eps, **kw) if cfg.final_norm else None
    self.map = (AttentionPooler(d, d, cfg.heads, 1, kind="map", mlp_dim=cfg.mlp_dim, attention=attention,
                                act=act, norm_eps=norm_eps, **kw) if cfg.pool == "map" else None)

  def __call__(self, image_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Returns (tokens_BxNxD, pooled_BxD or None when pool is `none`).

    The tokens include the class token, if any, except when it is the pooled output.
    """
    B = image_BxHxWx3.shape[0]
    p = self.patch
    patches_BxNxP = einops.rearrange(image_BxHxWx3, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=p, q=p)
    x_BxNxD = self.embed(patches_BxNxP)
    if self.cls is not None:
      cls = jnp.broadcast_to(self.cls[...].astype(x_BxNxD.dtype), (B, 1, x_BxNxD.shape[-1]))
      x_BxNxD = jnp.concatenate([cls, x_BxNxD], axis=1)
    if self.posemb is None:
      posemb_NxD = layers.sincos_2d(self.grid, self.grid, x_BxNxD.shape[-1])
      if self.cls is not None:  # the class token gets the zero vector
        posemb_NxD = jnp.concatenate([jnp.zeros_like(posemb_NxD[:1]), posemb_NxD])
    else:
      posemb_NxD = self.posemb[...]
    x_BxNxD = x_BxNxD + posemb_NxD.astype(x_BxNxD.dtype)
    if self.ln_pre is not None:
      x_BxNxD = self.ln_pre(x_BxNxD)
    x_BxNxD = self.blocks(x_BxNxD)
    if self.ln is not None:
      x_BxNxD = self.ln(x_BxNxD)
    if self.pool == "cls":
      return x_BxNxD[:, 1:], x_BxNxD[:, 0]
    if self.pool == "gap":  # over the patches (open_clip's `avg` pool): a class token is left out
      return x_BxNxD, (x_BxNxD if self.cls is None else x_BxNxD[:, 1:]).mean(axis=1)
    if self.pool == "map":
      return x_BxNxD, self.map(x_BxNxD)[:, 0]
    return x_BxNxD, None
