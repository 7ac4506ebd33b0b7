"""NaFlex image encoder (SigLIP 2's variable-resolution tower; HF `Siglip2VisionModel`): images of any aspect
ratio as already-patchified, padded token sequences, each image on its own (h, w) patch grid.

Input contract (`model.vision.kind=naflex`): the "image" that `encoders.encode_vision`, `TwoTower.encode_image`
and `TwoTower.__call__` pass on is a dict (a pytree, so `jax.jit` takes it as is):

    {"patches": float [B, N, P]   P = patch*patch*3, each patch flattened (row, column, channel), as
                                  transformers' Siglip2ImageProcessor makes them; N = the padded length
     "shapes":  int   [B, 2]      each image's patch grid (h, w), 1 <= h*w <= N; token i of an image sits
                                  at row i // w, column i % w (row-major), tokens i >= h*w are padding
     "mask":    bool  [B, N]      true at real patches (the processor's pixel_attention_mask); every
                                  image has one, and none lies past its h*w tokens}

Patch embedding: a Linear P -> D (Siglip2's `patch_embedding`). Position embedding: a learned table of the
checkpoint's native square grid G x G (`model.vision.num_patches` = G*G), resized per image to its (h, w)
grid as `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` does (a triangle kernel,
widened by the scale where it shrinks; `resize_weights`), computed from the traced shapes so one
compiled step takes any mix of grids. Padding tokens are masked out of attention (as keys) and out of
the MAP pooling; their own outputs are meaningless. Returns `(tokens_BxNxD, pooled_BxD or None)` like
the ViT; the tokens include the padding positions (read them with `mask`). Parameters are named as the
ViT's (`embed`, `posemb`, `blocks`, `ln`, `map`), so converted Siglip2 weights fit either encoder.

Shape legend: B batch, N tokens (padded), P patch pixels, D width, G native grid side.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.fusion import AttentionPooler

POOLS = ("map", "none")
IMAGE_KEYS = ("patches", "shapes", "mask")


def native_grid(num_patches) -> int:
  """The side G of a square native table of `num_patches` = G*G positions; a ValueError otherwise."""
  if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1 \
      or math.isqrt(num_patches) ** 2 != num_patches:
    raise ValueError(f"model.vision.num_patches must be a square number of positions (the native G x G "
                     f"table, e.g. 256 = 16x16), got {num_patches!r}")
  return math.isqrt(num_patches)


def axis_weights(index_BxN: jax.Array, size_Bx1: jax.Array, grid: int) -> jax.Array:
  """[B, N, G]: the weights over the G source rows (or columns) of output index `index_BxN` in an axis
  resized from G to `size_Bx1`: torch's antialiased bilinear (align_corners=False), i.e. a triangle of
  half-width max(G / size, 1) around the source centre (index + 0.5) * G / size - 0.5, normalised."""
  scale_Bx1 = grid / size_Bx1.astype(jnp.float32)
  support_Bx1 = jnp.maximum(scale_Bx1, 1.0)
  center_BxN = (index_BxN.astype(jnp.float32) + 0.5) * scale_Bx1 - 0.5
  source_G = jnp.arange(grid, dtype=jnp.float32)
  w_BxNxG = jnp.maximum(1.0 - jnp.abs(source_G - center_BxN[..., None]) / support_Bx1[..., None], 0.0)
  return w_BxNxG / w_BxNxG.sum(-1, keepdims=True)


def resize_posemb(table_GxGxD: jax.Array, shapes_Bx2: jax.Array, n: int) -> jax.Array:
  """[B, n, D] float32: the G x G table resized to each image's (h, w) grid, flattened row-major, tokens
  past h*w taking the first position's (as transformers pads). Separable: rows, then columns."""
  grid = table_GxGxD.shape[0]
  h_Bx1, w_Bx1 = shapes_Bx2[:, :1], shapes_Bx2[:, 1:]
  i_N = jnp.arange(n)[None, :]
  inside_BxN = i_N < h_Bx1 * w_Bx1
  row_BxN = jnp.where(inside_BxN, i_N // w_Bx1, 0)
  col_BxN = jnp.where(inside_BxN, i_N % w_Bx1, 0)
  wr_BxNxG = axis_weights(row_BxN, h_Bx1, grid)
  wc_BxNxG = axis_weights(col_BxN, w_Bx1, grid)
  return jnp.einsum("bng,bnk,gkd->bnd", wr_BxNxG, wc_BxNxG, table_GxGxD.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def check_image(image, patch_pixels: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(patches_BxNxP, shapes_Bx2, mask_BxN) of a NaFlex input, or a one-line ValueError saying what is
  wrong. Shapes are always checked; values (grids, mask) where they are concrete (not under `jit`)."""
  if not isinstance(image, dict) or set(image) != set(IMAGE_KEYS):
    got = sorted(image) if isinstance(image, dict) else f"an array of shape {getattr(image, 'shape', '?')}"
    raise ValueError(f"a naflex encoder takes image={{'patches': [B, N, P], 'shapes': [B, 2] (h, w), "
                     f"'mask': [B, N]}}, got {got}")
  patches, shapes, mask = (image[k] for k in IMAGE_KEYS)
  B, N = patches.shape[:2] if patches.ndim == 3 else (None, None)
  if patches.ndim != 3 or patches.shape[2] != patch_pixels:
    raise ValueError(f"naflex image['patches'] must be [B, N, {patch_pixels}] (patch*patch*3), "
                     f"got {tuple(patches.shape)}")
  if tuple(shapes.shape) != (B, 2) or tuple(mask.shape) != (B, N):
    raise ValueError(f"naflex image['shapes'] must be [{B}, 2] and image['mask'] [{B}, {N}], got "
                     f"{tuple(shapes.shape)} and {tuple(mask.shape)}")
  if not jnp.issubdtype(shapes.dtype, jnp.integer):
    raise ValueError(f"naflex image['shapes'] must hold integers (h, w), got {shapes.dtype}")
  if not any(isinstance(x, jax.core.Tracer) for x in (shapes, mask)):
    _check_values(np.asarray(shapes), np.asarray(mask, bool), N)
  return patches, shapes, mask.astype(bool)


def _check_values(shapes_Bx2: np.ndarray, mask_BxN: np.ndarray, n: int) -> None:
  """The value checks of `check_image`: grids that fit the sequence, a mask inside each grid, not empty."""
  area_B = shapes_Bx2[:, 0].astype(np.int64) * shapes_Bx2[:, 1]
  bad = np.flatnonzero((shapes_Bx2 < 1).any(1) | (area_B > n))
  if bad.size:
    b = int(bad[0])
    raise ValueError(f"naflex image {b} has grid (h, w) = {tuple(shapes_Bx2[b].tolist())}: h and w must be >= 1 "
                     f"with h*w <= {n} tokens")
  empty = np.flatnonzero(~mask_BxN.any(1))
  if empty.size:
    raise ValueError(f"naflex image {int(empty[0])} has no valid token in image['mask']; every image needs "
                     "at least one")
  outside = np.flatnonzero((mask_BxN & (np.arange(n)[None, :] >= area_B[:, None])).any(1))
  if outside.size:
    b = int(outside[0])
    raise ValueError(f"naflex image {b}'s mask marks tokens past its {tuple(shapes_Bx2[b].tolist())} grid "
                     f"(positions >= {int(area_B[b])}); valid tokens must lie inside the grid")


class NaFlex(nnx.Module):
  """Linear patch embedding + per-image resized position embedding -> masked blocks -> LayerNorm ->
  masked MAP head (or no pooling). `model.vision`: kind, patch_size, width, depth, heads, mlp_dim,
  pool (map | none), num_patches (the native table: a square), max_num_patches (the padded N data
  is packed to: read by the data path and shape checks, not by the module)."""

  def __init__(self, cfg: ml_collections.ConfigDict, image_size: int, *, attention: str, remat: str,
               scan: bool, act: str, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    del image_size  # each image brings its own grid
    if cfg.pool not in POOLS:
      raise ValueError(f"model.vision.pool must be one of {'|'.join(POOLS)} for kind=naflex, got {cfg.pool!r}")
    m = cfg.max_num_patches
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
      raise ValueError(f"model.vision.max_num_patches must be an int >= 1 (the padded token count), got {m!r}")
    self.grid = native_grid(cfg.num_patches)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, self.patch_pixels = cfg.width, 3 * cfg.patch_size**2
    self.embed = layers.dense(self.patch_pixels, d, ("patch", "embed"), use_bias=True, **kw)
    self.posemb = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (self.grid**2, d), param_dtype),
                            axes=(None, "embed"))
    self.blocks = layers.Stack(lambda r: layers.Block(d, cfg.heads, cfg.mlp_dim, impl=attention, act=act,
                                                      norm_eps=norm_eps, dtype=dtype, param_dtype=param_dtype,
                                                      rngs=r),
                               cfg.depth, scan=scan, remat=remat, rngs=rngs)
    self.ln = layers.layer_norm(d, eps=norm_eps, **kw)
    self.map = (AttentionPooler(d, d, cfg.heads, 1, kind="map", mlp_dim=cfg.mlp_dim, attention=attention,
                                act=act, norm_eps=norm_eps, **kw) if cfg.pool == "map" else None)

  def input_tokens(self, patches_BxNxP: jax.Array, shapes_Bx2: jax.Array) -> jax.Array:
    """What the blocks get: patch embeddings plus each image's resized position embeddings, [B, N, D]."""
    x_BxNxD = self.embed(patches_BxNxP)
    D = x_BxNxD.shape[-1]
    table_GxGxD = self.posemb[...].reshape(self.grid, self.grid, D)
    return x_BxNxD + resize_posemb(table_GxGxD, shapes_Bx2, x_BxNxD.shape[1]).astype(x_BxNxD.dtype)

  def __call__(self, image: dict, *, train: bool = False, rng: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """Returns (tokens_BxNxD, pooled_BxD or None when pool is `none`); `image` as the module docstring
    says. `train` and `rng` are accepted for symmetry with the ViT and unused (no patch dropout)."""
    del train, rng
    patches_BxNxP, shapes_Bx2, mask_BxN = check_image(image, self.patch_pixels)
    x_BxNxD = self.input_tokens(patches_BxNxP, shapes_Bx2)
    N = x_BxNxD.shape[1]
    keys_BxNxN = jnp.broadcast_to(mask_BxN[:, None, :], (mask_BxN.shape[0], N, N))  # padding is no key
    x_BxNxD = self.ln(self.blocks(x_BxNxD, mask=keys_BxNxN))
    if self.map is None:
      return x_BxNxD, None
    return x_BxNxD, self.map(x_BxNxD, mask_BxN=mask_BxN)[:, 0]
