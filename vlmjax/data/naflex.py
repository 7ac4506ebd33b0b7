"""NaFlex batches (SigLIP 2's variable-resolution input): each image at its own aspect ratio on a patch grid.

`data.train.max_patches` > 0 turns the batch's "image" into the dict the NaFlex encoder reads
(`vlmjax/models/naflex.py`):

    {"patches": float32 [b, N, P]   N = max_patches, P = patch*patch*3, each patch (row, column, channel)
     "shapes":  int32   [b, 2]      each image's grid (h, w); token i at row i // w, column i % w
     "mask":    bool    [b, N]      true at the h*w real patches, false at the padding after them}

Per image (`Decoder`): decode, keep the whole image (no crop), pick the largest grid of the image's
aspect ratio with h*w <= max_patches (`grid_for`: the grid transformers' Siglip2ImageProcessor picks),
resize to (h*patch, w*patch), normalise with CLIP's MEAN/STD (as the square path), `patchify`, `pad`
to N. An image narrower or lower than one patch is skipped and counted as `too_small`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.data import locca, transforms
from vlmjax.errors import ConfigError

KEYS = ("patches", "shapes", "mask")
EVALUATORS = ("zero_shot", "retrieval", "fewshot", "suite")  # evaluator types that read NaFlex images


class TooSmall(transforms.BadImage):
  """An image with a side shorter than one patch: no grid of whole patches keeps its aspect ratio."""


def grid_for(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
  """(h, w): the patch grid of an image of `height` x `width` pixels at scale s, h = ceil(height*s/patch),
  w = ceil(width*s/patch), for the largest s with h*w <= max_patches (each side >= 1), as
  Siglip2ImageProcessor's `get_image_size_for_max_num_patches`. That function bisects on s; here the
  answer is exact: h*w only steps up where one side reaches an integer, s = k*patch/height (then
  h = k, w = ceil(width*k/height)) or s = k*patch/width, so the largest feasible such step is the grid.
  (The processor also caps s at 100 and resolves s to 1e-5: equal whenever s < 100 and the two sides'
  steps are further apart than that, i.e. for any image under ~1.5 megapixels at patch 16.)"""
  if max_patches < 1:
    raise ConfigError(f"a NaFlex budget of max_patches={max_patches} holds no patch; it must be an int >= 1")
  if height < 1 or width < 1 or patch < 1:
    raise ValueError(f"grid_for needs a non-empty image and patch, got {height}x{width} px, patch {patch}")
  k = np.arange(1, max_patches + 1, dtype=np.int64)
  by_rows = np.stack([k, -(-width * k // height)], 1)   # s = k*patch/height: h = k
  by_cols = np.stack([-(-height * k // width), k], 1)   # s = k*patch/width: w = k
  grids = np.concatenate([by_rows, by_cols])
  grids = grids[grids[:, 0] * grids[:, 1] <= max_patches]  # never empty: k = 1 gives (1, 1) for one side
  h, w = max(map(tuple, grids.tolist()))  # feasible grids grow together with s: the largest of both sides
  return int(h), int(w)


def patchify(image_HxWxC: np.ndarray, patch: int) -> np.ndarray:
  """[H, W, C] with H, W multiples of `patch` -> [(H/patch)*(W/patch), patch*patch*C]: patches row-major
  over the grid, each flattened (row, column, channel), as Siglip2ImageProcessor's convert_image_to_patches."""
  H, W, C = image_HxWxC.shape
  if H % patch or W % patch:
    raise ValueError(f"patchify needs an image of whole {patch} px patches, got {H}x{W}")
  h, w = H // patch, W // patch
  return image_HxWxC.reshape(h, patch, w, patch, C).transpose(0, 2, 1, 3, 4).reshape(h * w, patch * patch * C)


def pad(patches_TxP: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(patches [n, P] with zeros after the T real ones, mask [n] bool: true at the real ones)."""
  T = patches_TxP.shape[0]
  if T > n:
    raise ValueError(f"{T} patches do not fit a NaFlex sequence of {n}")
  out_NxP = np.zeros((n, patches_TxP.shape[1]), patches_TxP.dtype)
  out_NxP[:T] = patches_TxP
  return out_NxP, np.arange(n) < T


class Decoder:
  """Encoded bytes or uint8 [H, W, 3] -> (uint8 [h*patch, w*patch, 3] RGB, (h, w)): the whole image at its
  aspect ratio on `grid_for`'s grid. Raises TooSmall (a side under one patch) or BadImage."""

  def __init__(self, patch: int, max_patches: int):
    if max_patches < 1:
      raise ConfigError(f"data.train.max_patches={max_patches} holds no patch; NaFlex batches need an int >= 1")
    self.patch, self.max_patches = patch, max_patches

  def grid(self, width: int, height: int) -> tuple[int, int]:
    if width < self.patch or height < self.patch:
      raise TooSmall(f"{width}x{height} px is smaller than one {self.patch} px patch")
    return grid_for(height, width, self.patch, self.max_patches)

  def __call__(self, image) -> tuple[np.ndarray, tuple[int, int]]:
    grids = []

    def size(width: int, height: int) -> tuple[int, int]:
      grids.append(self.grid(width, height))
      return grids[-1][0] * self.patch, grids[-1][1] * self.patch

    return transforms.decode_whole(image, size), grids[-1]

  def write(self, image_uint8: np.ndarray, grid: tuple[int, int], out: dict[str, np.ndarray], slot: int) -> None:
    """Row `slot` of a batch's image dict (`empty_images`) from a decoded image: normalised, patchified, padded."""
    image_HxWx3 = np.empty(image_uint8.shape, np.float32)
    transforms.normalize_into(image_uint8, image_HxWx3)  # the square path's look-up: the same values
    patches_TxP = patchify(image_HxWx3, self.patch)
    out["patches"][slot], out["mask"][slot] = pad(patches_TxP, self.max_patches)
    out["shapes"][slot] = grid

  def empty_images(self, batch: int) -> dict[str, np.ndarray]:
    n, p = self.max_patches, 3 * self.patch**2
    return {"patches": np.zeros((batch, n, p), np.float32), "shapes": np.zeros((batch, 2), np.int32),
            "mask": np.zeros((batch, n), bool)}


def abstract_images(batch: int, max_patches: int, patch: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The ShapeDtypeStructs of a global NaFlex image dict, split over the batch axis like the rest of the batch."""
  return {"patches": jax.ShapeDtypeStruct((batch, max_patches, 3 * patch**2), jnp.float32, sharding=sharding),
          "shapes": jax.ShapeDtypeStruct((batch, 2), jnp.int32, sharding=sharding),
          "mask": jax.ShapeDtypeStruct((batch, max_patches), jnp.bool_, sharding=sharding)}


def check_config(cfg: ml_collections.ConfigDict, *, distill: bool) -> None:
  """One-line ConfigErrors, before training, where the model and NaFlex batches do not fit together:
  `model.vision.kind=naflex` needs 1 <= data.train.max_patches <= model.vision.max_num_patches, and NaFlex
  batches need a naflex tower of a two-tower model, evaluators of the `EVALUATORS` types only (they read
  the images as training does, within the run's budget), no LocCa tasks and no self-distillation
  (`distill`: whether its terms are on), which read square images only so far."""
  n, vision = cfg.data.train.max_patches, cfg.model.vision
  others = {cfg.evals[k].type for k in cfg.evals.keys()} - set(EVALUATORS)
  if vision.kind != "naflex":
    if n:
      raise ConfigError(f"data.train.max_patches={n} makes NaFlex batches but model.vision.kind={vision.kind!r} "
                        "reads square images; set model.vision.kind=naflex or data.train.max_patches=0")
    return
  if n < 1 or n > vision.max_num_patches:
    raise ConfigError(f"model.vision.kind=naflex needs data.train.max_patches in [1, model.vision.max_num_patches="
                      f"{vision.max_num_patches}] (the patches per image), got {n}")
  unsupported = [what for what, on in (
      (f"model.name={cfg.model.name!r} (its decoder does not mask padding; use two_tower)", cfg.model.name != "two_tower"),
      (f"evaluators of type {', '.join(sorted(others))}: only {', '.join(EVALUATORS)} read NaFlex images so far",
       bool(others)),
      ("data.train.locca (LocCa's tasks); set its weights to 0", locca.active(cfg.data.train.locca)),
      ("loss.distill_weight/masked_weight (self-distillation); set them to 0", distill)) if on]
  if unsupported:
    raise ConfigError(f"NaFlex batches (model.vision.kind=naflex) do not work with {unsupported[0]}")
