"""Vision Transformer image encoder with `cls | gap | map | none` pooling and FLIP patch dropout.

Shape legend: B batch, H/W image height/width, P patch pixels (p*p*3),
N image tokens, K kept patch tokens, D width.
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


def kept_patches(n: int, patch_dropout: float) -> int:
  """How many of `n` patch tokens each image keeps in training: round((1 - p) * n), at least one."""
  return max(1, round((1.0 - patch_dropout) * n))


def keep_indices(rng: jax.Array, batch: int, n: int, keep: int) -> jax.Array:
  """[batch, keep] int32: for each example its own random subset of `keep` of `n` patch positions,
  in increasing order (FLIP: argsort of uniform noise). The same `rng` gives the same subsets."""
  noise_BxN = jax.random.uniform(rng, (batch, n))
  idx_BxK = jnp.argsort(noise_BxN, axis=1)[:, :keep]  # a sort, split over the batch as it is sharded
  return jnp.sort(idx_BxK, axis=1).astype(jnp.int32)  # (lax.top_k would gather the batch on every device)


class ViT(nnx.Module):
  """Patch embedding (+ optional class token) -> position embedding -> transformer blocks.

  Layout knobs, so published checkpoints map one to one: `patch_bias` (big_vision,
  SigLIP: yes; OpenAI/open_clip CLIP: no), `cls_token` (a learned token prepended, with
  its own position embedding), `ln_pre` (a norm before the blocks, as CLIP), and
  `final_norm` (a norm after them; open_clip's CoCa has none, its pooler normalises).

  `patch_dropout` p (FLIP, open_clip's `patch_dropout`): in training each image keeps a random
  round((1 - p) * N) of its N patch tokens (the class token always), gathered after the position
  embedding, so the blocks, the pooling and whatever reads the tokens (CoCa's poolers, a captioner's
  decoder) see a shorter sequence. Outside training every patch is seen.
  """

  takes_rng = True  # called as `vit(image, train=True, rng=key)` in training (encoders.encode_vision)

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
    p = cfg.patch_dropout
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
      raise ValueError(f"model.vision.patch_dropout must be a number in [0, 1), got {p!r}")
    self.n_keep = kept_patches(self.grid**2, p)
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

  def _posemb(self, gh: int, gw: int, D: int) -> jax.Array:
    """Position embeddings of a gh x gw grid ([class token row,] patches; [N(+1), D]). A grid other
    than the configured one (SigLIP 2's smaller local views) gets the learned table resized bilinearly
    in the forward pass, or the sin-cos table of that grid."""
    if self.posemb is None:
      posemb_NxD = layers.sincos_2d(gh, gw, D)
      return posemb_NxD if self.cls is None else jnp.concatenate([jnp.zeros_like(posemb_NxD[:1]), posemb_NxD])
    posemb_NxD = self.posemb[...]
    if (gh, gw) == (self.grid, self.grid):
      return posemb_NxD
    first = 0 if self.cls is None else 1
    grid_GxGxD = posemb_NxD[first:].reshape(self.grid, self.grid, D)
    resized_NxD = jax.image.resize(grid_GxGxD, (gh, gw, D), "bilinear", antialias=False).reshape(gh * gw, D)
    return jnp.concatenate([posemb_NxD[:first], resized_NxD.astype(posemb_NxD.dtype)])

  def input_tokens(self, image_BxHxWx3: jax.Array, rng: jax.Array | None = None,
                   mask_BxN: jax.Array | None = None, mask_token_D: jax.Array | None = None) -> jax.Array:
    """What the blocks get (before `ln_pre`): patch embeddings plus position embeddings, class
    token first, [B, N(+1), D]; with `rng`, only each image's kept patches ([B, K(+1), D]). With
    `mask_BxN`, the patch embeddings where it is true are replaced by `mask_token_D` before the
    position embedding is added (masked prediction, as iBOT and TIPS)."""
    B, H, W, _ = image_BxHxWx3.shape
    p = self.patch
    patches_BxNxP = einops.rearrange(image_BxHxWx3, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=p, q=p)
    x_BxNxD = self.embed(patches_BxNxP)
    D = x_BxNxD.shape[-1]
    if mask_BxN is not None:
      x_BxNxD = jnp.where(mask_BxN[:, :, None], mask_token_D.astype(x_BxNxD.dtype), x_BxNxD)
    posemb_NxD = self._posemb(H // p, W // p, D).astype(x_BxNxD.dtype)
    first = 0 if self.cls is None else 1
    x_BxNxD = x_BxNxD + posemb_NxD[first:]  # positions before dropping: kept tokens keep theirs
    if rng is not None and self.n_keep < x_BxNxD.shape[1]:
      idx_BxK = keep_indices(rng, B, x_BxNxD.shape[1], self.n_keep)
      x_BxNxD = jnp.take_along_axis(x_BxNxD, idx_BxK[:, :, None], axis=1)  # a gather: the sequence shrinks
    if self.cls is not None:
      cls_Bx1xD = jnp.broadcast_to(self.cls[...].astype(x_BxNxD.dtype) + posemb_NxD[:1], (B, 1, D))
      x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1)
    return x_BxNxD

  def __call__(self, image_BxHxWx3: jax.Array, *, train: bool = False, rng: jax.Array | None = None,
               mask_BxN: jax.Array | None = None, mask_token_D: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """Returns (tokens_BxNxD, pooled_BxD or None when pool is `none`).

    The tokens include the class token, if any, except when it is the pooled output. In training
    (`train` and `rng`) with patch dropout, N is the kept patches (plus the class token). An image of
    another size than the configured one is read on its own grid (see `_posemb`); `mask_BxN` and
    `mask_token_D`: see `input_tokens`.
    """
    if train and rng is None and self.n_keep < self.grid**2:
      raise ValueError("a ViT with model.vision.patch_dropout > 0 needs `rng` when train=True")
    x_BxNxD = self.input_tokens(image_BxHxWx3, rng if train else None, mask_BxN, mask_token_D)
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
