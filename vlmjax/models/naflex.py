"""NaFlex image encoder (SigLIP 2's variable-resolution tower; HF `Siglip2VisionModel`): images of any aspect
ratio as already-patchified, padded token sequences, each image on its own (h, w) patch grid.

Input contract (`model.vision.kind=naflex`): the "image" that `encoders.encode_vision`, `TwoTower.encode_image`
and `TwoTower.__call__` pass on is a dict (a pytree, so `jax.jit` takes it as is):

    {"patches": float [B, N, P]   P = patch*patch*3, each patch flattened (row, column, channel), as
                                  transformers' Siglip2ImageProcessor makes them; N = the padded length
     "shapes":  int   [B, 2]      each image's patch grid (h, w), 1 <= h*w <= N; token i of an image sits
                                  at row i // w, column i % w (row-major), tokens i >= h*w are padding
     "mask":    bool  [B, N]      true at real patches (the processor's pixel_attention_mask); every
                                  image has one, and none lies past its h*w tokens
     "positions": int [B, N, 2]   optional: each token's (row, column) in its image's grid; without it
                                  token i sits at (i // w, i % w)}

Packed (`data.train.pack`): several images share a sequence. Then `patches`, `mask` and `positions` are
[R, N, ...] over R rows, `shapes` stays [B, 2] over the B images, and

     "segments": int  [R, N]      0 at padding, s >= 1 at the tokens of the row's s-th image (1, 2, ...
                                  in order: a row holding k images uses 1..k); the images are numbered
                                  row-major, row 0's first, so image b of `shapes` (and of the texts)
                                  is the b-th segment met reading the rows in order.

A token attends to the tokens of its own image only; each image is pooled over its own tokens, and the
pooled output is [B, D] in the images' order, as unpacked: packing changes which tokens share a
sequence, never an image's result (`tests/test_naflex.py` compares the two).

Patch embedding: a Linear P -> D (Siglip2's `patch_embedding`). Position embedding: a learned table of the
checkpoint's native square grid G x G (`model.vision.num_patches` = G*G), resized per image to its (h, w)
grid as `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` does (a triangle kernel,
widened by the scale where it shrinks; `resize_weights`), computed from the traced shapes so one
compiled step takes any mix of grids. Padding tokens are masked out of attention (as keys) and out of
the MAP pooling; their own outputs are meaningless. Returns `(tokens_BxNxD, pooled_BxD or None)` like
the ViT; the tokens include the padding positions (read them with `mask`). Parameters are named as the
ViT's (`embed`, `posemb`, `blocks`, `ln`, `map`), so converted Siglip2 weights fit either encoder.

Shape legend: B batch (images), R rows (sequences: B unpacked), N tokens (padded), P patch pixels,
D width, G native grid side.
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
OPTIONAL_KEYS = ("positions", "segments")


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


def token_posemb(table_GxGxD: jax.Array, positions_RxNx2: jax.Array, grids_RxNx2: jax.Array) -> jax.Array:
  """[R, N, D] float32: at each token, the G x G table resized to that token's image grid (h, w), read at
  the token's (row, column). Separable: the weights over source rows, then over source columns."""
  grid = table_GxGxD.shape[0]
  wr_RxNxG = axis_weights(positions_RxNx2[..., 0], grids_RxNx2[..., 0], grid)
  wc_RxNxG = axis_weights(positions_RxNx2[..., 1], grids_RxNx2[..., 1], grid)
  return jnp.einsum("bng,bnk,gkd->bnd", wr_RxNxG, wc_RxNxG, table_GxGxD.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def row_major_positions(shapes_Bx2: jax.Array, n: int) -> jax.Array:
  """[B, n, 2]: (row, column) of token i of each image, i // w and i % w; (0, 0) past its h*w tokens (the
  first position's embedding, as transformers pads)."""
  h_Bx1, w_Bx1 = shapes_Bx2[:, :1], shapes_Bx2[:, 1:]
  i_N = jnp.arange(n)[None, :]
  inside_BxN = i_N < h_Bx1 * w_Bx1
  return jnp.stack([jnp.where(inside_BxN, i_N // w_Bx1, 0), jnp.where(inside_BxN, i_N % w_Bx1, 0)], -1)


def resize_posemb(table_GxGxD: jax.Array, shapes_Bx2: jax.Array, n: int) -> jax.Array:
  """[B, n, D] float32: the G x G table resized to each image's (h, w) grid, flattened row-major, tokens
  past h*w taking the first position's (as transformers pads)."""
  grids_BxNx2 = jnp.broadcast_to(shapes_Bx2[:, None, :], (shapes_Bx2.shape[0], n, 2))
  return token_posemb(table_GxGxD, row_major_positions(shapes_Bx2, n), grids_BxNx2)


def image_of_token(segments_RxN: jax.Array) -> jax.Array:
  """[R, N]: the index (into `shapes`) of the image each token of packed rows belongs to (images numbered
  row-major: the images of the rows before, plus the segment - 1); 0 at padding."""
  count_R = segments_RxN.max(axis=1)
  before_R = jnp.cumsum(count_R) - count_R
  return jnp.where(segments_RxN > 0, before_R[:, None] + segments_RxN - 1, 0)


def pooling_rows(segments_RxN: jax.Array, images: int) -> tuple[jax.Array, jax.Array]:
  """(row_B, mask_BxN): the row holding each of the `images` images of packed rows, and which of that
  row's tokens are the image's own."""
  count_R = segments_RxN.max(axis=1)
  row_B = jnp.searchsorted(jnp.cumsum(count_R), jnp.arange(images), side="right")
  row_B = jnp.minimum(row_B, segments_RxN.shape[0] - 1)
  first_B = (jnp.cumsum(count_R) - count_R)[row_B]
  return row_B, segments_RxN[row_B] == (jnp.arange(images) - first_B + 1)[:, None]


def check_image(image, patch_pixels: int) -> dict:
  """The NaFlex input as a dict with every key ("positions" made row-major where absent, "segments" None
  unpacked), or a one-line ValueError saying what is wrong. Shapes are always checked; values (grids,
  mask, segments) where they are concrete (not under `jit`)."""
  keys = set(image) if isinstance(image, dict) else set()
  if not keys >= set(IMAGE_KEYS) or not keys <= set(IMAGE_KEYS + OPTIONAL_KEYS):
    got = sorted(image) if isinstance(image, dict) else f"an array of shape {getattr(image, 'shape', '?')}"
    raise ValueError(f"a naflex encoder takes image={{'patches': [B, N, P], 'shapes': [B, 2] (h, w), "
                     f"'mask': [B, N]}} (packed rows add 'segments' and 'positions'), got {got}")
  patches, shapes, mask = (image[k] for k in IMAGE_KEYS)
  R, N = patches.shape[:2] if patches.ndim == 3 else (None, None)
  if patches.ndim != 3 or patches.shape[2] != patch_pixels:
    raise ValueError(f"naflex image['patches'] must be [R, N, {patch_pixels}] (patch*patch*3), "
                     f"got {tuple(patches.shape)}")
  segments = image.get("segments")
  B = shapes.shape[0] if segments is not None else R
  if tuple(shapes.shape) != (B, 2) or tuple(mask.shape) != (R, N):
    raise ValueError(f"naflex image['shapes'] must be [{B}, 2] and image['mask'] [{R}, {N}], got "
                     f"{tuple(shapes.shape)} and {tuple(mask.shape)}")
  if segments is not None and ("positions" not in image or tuple(segments.shape) != (R, N)):
    raise ValueError(f"packed naflex images need image['segments'] [{R}, {N}] and image['positions'] "
                     f"[{R}, {N}, 2], got {sorted(image)}")
  positions = image.get("positions")
  if positions is not None and tuple(positions.shape) != (R, N, 2):
    raise ValueError(f"naflex image['positions'] must be [{R}, {N}, 2] (row, column), got {tuple(positions.shape)}")
  for k in ("shapes", "positions", "segments"):
    if image.get(k) is not None and not jnp.issubdtype(image[k].dtype, jnp.integer):
      raise ValueError(f"naflex image[{k!r}] must hold integers, got {image[k].dtype}")
  if not any(isinstance(image[k], jax.core.Tracer) for k in image):
    _check_values(np.asarray(shapes), np.asarray(mask, bool), N, segments)
    if positions is not None:
      _check_positions(np.asarray(positions), np.asarray(shapes), np.asarray(mask, bool), segments)
  return {"patches": patches, "shapes": shapes, "mask": mask.astype(bool), "segments": segments,
          "positions": row_major_positions(shapes, N) if positions is None else positions}


def _check_values(shapes_Bx2: np.ndarray, mask_RxN: np.ndarray, n: int, segments) -> None:
  """The value checks of `check_image`: grids that fit the sequence, a mask inside each grid, not empty;
  packed, segments that number the `shapes` images and match the mask."""
  area_B = shapes_Bx2[:, 0].astype(np.int64) * shapes_Bx2[:, 1]
  bad = np.flatnonzero((shapes_Bx2 < 1).any(1) | (area_B > n))
  if bad.size:
    b = int(bad[0])
    raise ValueError(f"naflex image {b} has grid (h, w) = {tuple(shapes_Bx2[b].tolist())}: h and w must be >= 1 "
                     f"with h*w <= {n} tokens")
  if segments is not None:
    segments_RxN = np.asarray(segments)
    if (mask_RxN != (segments_RxN > 0)).any() or int(segments_RxN.max(1).sum()) != len(shapes_Bx2):
      raise ValueError(f"packed naflex rows hold {int(segments_RxN.max(1).sum())} segments for "
                       f"{len(shapes_Bx2)} images in image['shapes'], or a mask that is not segments > 0; "
                       "they must agree")
    return
  empty = np.flatnonzero(~mask_RxN.any(1))
  if empty.size:
    raise ValueError(f"naflex image {int(empty[0])} has no valid token in image['mask']; every image needs "
                     "at least one")
  outside = np.flatnonzero((mask_RxN & (np.arange(n)[None, :] >= area_B[:, None])).any(1))
  if outside.size:
    b = int(outside[0])
    raise ValueError(f"naflex image {b}'s mask marks tokens past its {tuple(shapes_Bx2[b].tolist())} grid "
                     f"(positions >= {int(area_B[b])}); valid tokens must lie inside the grid")


def _check_positions(positions_RxNx2: np.ndarray, shapes_Bx2: np.ndarray, mask_RxN: np.ndarray, segments) -> None:
  """Every valid token's (row, column) inside its image's grid."""
  image_RxN = (np.asarray(image_of_token(jnp.asarray(segments))) if segments is not None
               else np.broadcast_to(np.arange(len(shapes_Bx2))[:, None], mask_RxN.shape))
  outside_RxN = mask_RxN & ((positions_RxNx2 < 0) | (positions_RxNx2 >= shapes_Bx2[image_RxN])).any(-1)
  if outside_RxN.any():
    r, i = (int(v) for v in np.argwhere(outside_RxN)[0])
    raise ValueError(f"naflex image['positions'] at row {r}, token {i} sits at {tuple(positions_RxNx2[r, i].tolist())}, "
                     f"outside its image's {tuple(shapes_Bx2[image_RxN[r, i]].tolist())} grid")


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

  def embed_tokens(self, patches_RxNxP: jax.Array, positions_RxNx2: jax.Array, grids_RxNx2: jax.Array) -> jax.Array:
    """Patch embeddings plus the position embeddings of each token's (row, column) in its image's grid."""
    x_RxNxD = self.embed(patches_RxNxP)
    D = x_RxNxD.shape[-1]
    table_GxGxD = self.posemb[...].reshape(self.grid, self.grid, D)
    return x_RxNxD + token_posemb(table_GxGxD, positions_RxNx2, grids_RxNx2).astype(x_RxNxD.dtype)

  def __call__(self, image: dict, *, train: bool = False, rng: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
    """Returns (tokens_RxNxD, pooled_BxD or None when pool is `none`); `image` as the module docstring
    says (unpacked, R = B). `train` and `rng` are accepted for symmetry with the ViT and unused."""
    del train, rng
    im = check_image(image, self.patch_pixels)
    mask_RxN, shapes_Bx2, segments_RxN = im["mask"], im["shapes"], im["segments"]
    R, N = mask_RxN.shape
    if segments_RxN is None:  # one image per row: padding is no key
      grids_RxNx2 = jnp.broadcast_to(shapes_Bx2[:, None, :], (R, N, 2))
      keys_RxNxN = jnp.broadcast_to(mask_RxN[:, None, :], (R, N, N))
    else:  # a token sees its own image's tokens; padding queries see all (their outputs are never read)
      grids_RxNx2 = shapes_Bx2[image_of_token(segments_RxN)]
      keys_RxNxN = ((segments_RxN[:, :, None] == segments_RxN[:, None, :]) | (segments_RxN[:, :, None] == 0)) \
          & mask_RxN[:, None, :]
    x_RxNxD = self.embed_tokens(im["patches"], im["positions"], grids_RxNx2)
    x_RxNxD = self.ln(self.blocks(x_RxNxD, mask=keys_RxNxN))
    if self.map is None:
      return x_RxNxD, None
    if segments_RxN is None:
      return x_RxNxD, self.map(x_RxNxD, mask_BxN=mask_RxN)[:, 0]
    row_B, mask_BxN = pooling_rows(segments_RxN, shapes_Bx2.shape[0])
    return x_RxNxD, self.map(x_RxNxD[row_B], mask_BxN=mask_BxN)[:, 0]

  def token_context(self, image: dict, tokens_RxNxD: jax.Array) -> layers.Masked:
    """Each image's tokens [B, N, D] and which are its own [B, N], for a decoder's cross-attention or a
    pooler (`encoders.encode_vision_context`); packed, each image's row, masked to its segment."""
    im = check_image(image, self.patch_pixels)
    if im["segments"] is None:
      return layers.Masked(tokens_RxNxD, im["mask"])
    row_B, mask_BxN = pooling_rows(im["segments"], im["shapes"].shape[0])
    return layers.Masked(tokens_RxNxD[row_B], mask_BxN)
