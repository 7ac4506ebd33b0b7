"""NaFlex batches (SigLIP 2's variable-resolution input): each image at its own aspect ratio on a patch grid.

`data.train.max_patches` > 0 turns the batch's "image" into the dict the NaFlex encoder reads
(`vlmjax/models/naflex.py`):

    {"patches": float32 [b, N, P]   N = max_patches, P = patch*patch*3, each patch (row, column, channel)
     "shapes":  int32   [b, 2]      each image's grid (h, w); token i at row i // w, column i % w
     "mask":    bool    [b, N]      true at the h*w real patches, false at the padding after them
     "positions": int32 [b, N, 2]   each token's (row, column) in its image's grid; (0, 0) at padding}

Per image (`Decoder`): decode, keep the whole image (no crop), pick the largest grid of the image's
aspect ratio with h*w <= max_patches (`grid_for`: the grid transformers' Siglip2ImageProcessor picks),
resize to (h*patch, w*patch), normalise (`data.train.normalize`, as the square path), `patchify`, `pad`
to N. An image narrower or lower than one patch is skipped and counted as `too_small`.

Packing (`data.train.pack`): the batch's B images share R rows of L tokens (`data.train.pack_rows`,
`data.train.pack_length`; by default L = 4 * max_patches and R * L = B * max_patches, the tokens of an
unpacked batch), so fewer rows carry padding. `pack` places the images largest first, each into the first
row with room (first-fit decreasing), and numbers them row-major; the batch's texts follow that order.
An image that fits no row is resized, at its aspect ratio, to the largest room left (counted:
`data/pack_resized`), so a batch never drops or defers an image and B stays fixed. The image dict holds
"patches", "mask" and "positions" over the R rows, "shapes" over the B images, and "segments" [R, L]
(`vlmjax/models/naflex.py` says how the encoder reads them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.data import transforms
from vlmjax.errors import ConfigError, DataError

KEYS = ("patches", "shapes", "mask", "positions")  # of unpacked batches; packed ones add "segments"
EVALUATORS = ("zero_shot", "retrieval", "fewshot", "captioning", "suite")  # evaluator types that read NaFlex images


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


def grid_positions(h: int, w: int) -> np.ndarray:
  """[h*w, 2]: (row, column) of each patch of an h x w grid, in `patchify`'s row-major order."""
  return np.stack(np.divmod(np.arange(h * w), w), 1).astype(np.int32)


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

  def __init__(self, patch: int, max_patches: int, normalize: str = "clip"):
    if max_patches < 1:
      raise ConfigError(f"data.train.max_patches={max_patches} holds no patch; NaFlex batches need an int >= 1")
    self.patch, self.max_patches, self.normalize = patch, max_patches, normalize

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
    transforms.normalize_into(image_uint8, image_HxWx3, self.normalize)  # the square path's look-up
    patches_TxP = patchify(image_HxWx3, self.patch)
    out["patches"][slot], out["mask"][slot] = pad(patches_TxP, self.max_patches)
    out["shapes"][slot] = grid
    out["positions"][slot] = 0
    out["positions"][slot, :len(patches_TxP)] = grid_positions(*grid)

  def empty_images(self, batch: int) -> dict[str, np.ndarray]:
    n, p = self.max_patches, 3 * self.patch**2
    return {"patches": np.zeros((batch, n, p), np.float32), "shapes": np.zeros((batch, 2), np.int32),
            "mask": np.zeros((batch, n), bool), "positions": np.zeros((batch, n, 2), np.int32)}


def budgets(data_cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The patch budgets of training batches: `data.train.budgets` (one drawn per batch), else max_patches alone."""
  return tuple(data_cfg.get("budgets") or ()) or (data_cfg.max_patches,)


def pack_geometry(data_cfg: ml_collections.ConfigDict, batch: int, budget: int | None = None) -> tuple[int, int] | None:
  """(rows, tokens per row) of packed batches of `batch` images at a patch `budget` (default: max_patches)
  (`data.train.pack*`); None unpacked."""
  if not data_cfg.get("pack"):
    return None
  budget = budget or data_cfg.max_patches
  length = data_cfg.pack_length or 4 * budget
  return data_cfg.pack_rows or -(-batch * budget // length), length


def host_pack(data_cfg: ml_collections.ConfigDict, host_batch: int, count: int) -> dict[int, tuple[int, int]] | None:
  """{budget: (rows, tokens per row)} of one of `count` hosts' packed batches (`pack_rows` counts the global
  batch's rows, as batch_size its images); None unpacked."""
  if not data_cfg.get("pack"):
    return None
  out = {}
  for n in budgets(data_cfg):
    rows, length = pack_geometry(data_cfg, host_batch * count, n)
    if rows % count:
      raise ConfigError(f"data.train.pack_rows={rows} (packed rows per batch) is not divisible by {count} processes")
    out[n] = (rows // count, length)
  return out


class Packed:
  """What a packed batch is made from: each image's decoded pixels and grid, placed into rows by `pack`."""

  def __init__(self, decoder: Decoder, rows: int, length: int, batch: int):
    self.decoder, self.rows, self.length = decoder, rows, length
    self.staged: list[tuple[np.ndarray, tuple[int, int]] | None] = [None] * batch

  def write(self, image_uint8: np.ndarray, grid: tuple[int, int], slot: int) -> None:
    self.staged[slot] = (image_uint8, grid)

  def pack(self, pool) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """(the packed image dict, order_B: the batch slot of each image in row-major order, the number of
    images resized to fit). A DataError when an image finds no token left (rows too few or too short)."""
    p = self.decoder.patch
    area_B = np.array([g[0] * g[1] for _, g in self.staged])
    free_R = np.full(self.rows, self.length)
    placed, resized = [], 0  # (row, offset, slot)
    for slot in np.argsort(-area_B, kind="stable"):
      image, grid = self.staged[slot]
      fits = np.flatnonzero(free_R >= area_B[slot])
      if not fits.size:  # no row has room: the image at its aspect ratio in the largest room left,
        row = int(np.argmax(free_R))  # keeping a token for each image still to place
        room = min(int(free_R[row]), int(free_R.sum()) - (len(self.staged) - len(placed) - 1))
        if room < 1:
          raise DataError(f"a packed batch cannot give each of its {len(self.staged)} images a token in "
                          f"data.train.pack_rows={self.rows} rows of pack_length={self.length} tokens; raise "
                          "pack_rows or pack_length")
        image, grid = Decoder(p, room, self.decoder.normalize)(image)
        self.staged[slot], resized = (image, grid), resized + 1
      else:
        row = int(fits[0])
      placed.append((row, self.length - int(free_R[row]), int(slot)))
      free_R[row] -= grid[0] * grid[1]
    placed.sort()
    out = empty_packed(self.rows, self.length, p, len(placed))
    segment = {}
    for b, (row, offset, slot) in enumerate(placed):
      segment[row] = segment.get(row, 0) + 1
      out["shapes"][b] = self.staged[slot][1]
      h, w = self.staged[slot][1]
      out["positions"][row, offset:offset + h * w] = grid_positions(h, w)
      out["segments"][row, offset:offset + h * w] = segment[row]
    list(pool.map(lambda rs: self._patches(out, *rs), [(r, o, s) for r, o, s in placed]))
    out["mask"] = out["segments"] > 0
    return out, np.array([s for _, _, s in placed]), resized

  def _patches(self, out: dict[str, np.ndarray], row: int, offset: int, slot: int) -> None:
    image_uint8, (h, w) = self.staged[slot]
    image_HxWx3 = np.empty(image_uint8.shape, np.float32)
    transforms.normalize_into(image_uint8, image_HxWx3, self.decoder.normalize)
    out["patches"][row, offset:offset + h * w] = patchify(image_HxWx3, self.decoder.patch)


def packed_shapes(rows: int, length: int, patch: int, batch: int) -> dict[str, tuple[tuple, type]]:
  """{key: (shape, dtype)} of a packed image dict: `batch` images in `rows` rows of `length` tokens."""
  return {"patches": ((rows, length, 3 * patch**2), np.float32), "shapes": ((batch, 2), np.int32),
          "mask": ((rows, length), np.bool_), "positions": ((rows, length, 2), np.int32),
          "segments": ((rows, length), np.int32)}


def empty_packed(rows: int, length: int, patch: int, batch: int) -> dict[str, np.ndarray]:
  return {k: np.zeros(shape, dtype) for k, (shape, dtype) in packed_shapes(rows, length, patch, batch).items()}


def abstract_images(batch: int, max_patches: int, patch: int, sharding,
                    packed: tuple[int, int] | None = None) -> dict[str, jax.ShapeDtypeStruct]:
  """The ShapeDtypeStructs of a global NaFlex image dict, split over the batch axis like the rest of the
  batch; `packed`: (rows, tokens per row) of packed batches (`pack_geometry`)."""
  if packed is not None:
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in packed_shapes(*packed, patch, batch).items()}
  return {"patches": jax.ShapeDtypeStruct((batch, max_patches, 3 * patch**2), jnp.float32, sharding=sharding),
          "shapes": jax.ShapeDtypeStruct((batch, 2), jnp.int32, sharding=sharding),
          "mask": jax.ShapeDtypeStruct((batch, max_patches), jnp.bool_, sharding=sharding),
          "positions": jax.ShapeDtypeStruct((batch, max_patches, 2), jnp.int32, sharding=sharding)}


def check_pack(data_cfg: ml_collections.ConfigDict, batch: int, devices: int = 1) -> None:
  """One-line ConfigErrors for `data.train.pack*` that cannot work: packing square images, a row shorter than
  one image's budget, rows that cannot give each image of the batch a token or be split over the mesh's
  `devices`, or lengths set but unused."""
  t = data_cfg
  if not t.pack:
    unused = [f"data.train.{k}={t[k]}" for k in ("pack_length", "pack_rows") if t[k]]
    if unused:
      raise ConfigError(f"{unused[0]} is read by packed NaFlex batches only; set data.train.pack=true or it to 0")
    return
  if not t.max_patches:
    raise ConfigError("data.train.pack=true packs NaFlex sequences; set data.train.max_patches > 0 (and "
                      "model.vision.kind=naflex) or data.train.pack=false")
  for budget in budgets(t):
    rows, length = pack_geometry(t, batch, budget)
    if length < budget:
      raise ConfigError(f"data.train.pack_length={length} is shorter than one image's budget ({budget} patches); "
                        "use a pack_length >= the largest budget (0: 4 * the batch's budget)")
    if rows * length < batch:
      raise ConfigError(f"data.train.pack_rows={rows} rows of {length} tokens cannot hold batch_size={batch} images "
                        f"(one token each at least); use pack_rows >= {-(-batch // length)}")
    if rows % devices:
      raise ConfigError(f"data.train.pack_rows={rows} packed rows are not divisible by the {devices} devices of the "
                        f"mesh; use a multiple of {devices}")


def check_config(cfg: ml_collections.ConfigDict, *, distill: bool, devices: int = 1) -> None:
  """One-line ConfigErrors, before training, where the model and NaFlex batches do not fit together:
  `model.vision.kind=naflex` needs 1 <= data.train.max_patches (and each of data.train.budgets) <=
  model.vision.max_num_patches, and NaFlex
  batches need a naflex tower, evaluators of the `EVALUATORS` types only (they read
  the images as training does, within the run's budget) and no self-distillation (`distill`: whether its
  terms are on), whose local views are square crops."""
  n, vision = cfg.data.train.max_patches, cfg.model.vision
  others = {cfg.evals[k].type for k in cfg.evals.keys()} - set(EVALUATORS)
  check_pack(cfg.data.train, cfg.batch_size, devices)
  if cfg.data.train.pack and cfg.optim.microbatches > 1:  # rows and images would be split apart
    raise ConfigError(f"data.train.pack=true does not work with optim.microbatches={cfg.optim.microbatches}: a "
                      "microbatch's rows would hold other images than its texts; set one of them off")
  if vision.kind != "naflex":
    if n or cfg.data.train.budgets:
      raise ConfigError(f"data.train.max_patches={n} or budgets={tuple(cfg.data.train.budgets)} make NaFlex batches "
                        f"but model.vision.kind={vision.kind!r} reads square images; set model.vision.kind=naflex or "
                        "data.train.max_patches=0 and budgets=()")
    return
  evals = [(f"evals.{k}.max_patches", cfg.evals[k].get("max_patches", 0)) for k in cfg.evals.keys()]
  for key, value in ([("data.train.max_patches", n)] + [("data.train.budgets", b) for b in cfg.data.train.budgets]
                     + [(k, v) for k, v in evals if v]):
    if value < 1 or value > vision.max_num_patches:
      raise ConfigError(f"model.vision.kind=naflex needs {key} in [1, model.vision.max_num_patches="
                        f"{vision.max_num_patches}] (the patches per image), got {value}")
  unsupported = [what for what, on in (
      (f"evaluators of type {', '.join(sorted(others))}: only {', '.join(EVALUATORS)} read NaFlex images so far",
       bool(others)),
      ("loss.distill_weight/masked_weight (self-distillation); set them to 0", distill)) if on]
  if unsupported:
    raise ConfigError(f"NaFlex batches (model.vision.kind=naflex) do not work with {unsupported[0]}")
