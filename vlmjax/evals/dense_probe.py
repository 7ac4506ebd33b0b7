"""Dense-feature probe: a linear head on frozen patch tokens predicts each patch's shape and colour.

What it measures: how much of an image's layout the vision tower's patch tokens carry (SigLIP 2's
dense-feature evaluations, at CPU size on the multi-object shapes set). The tower is frozen; only a
linear head is fitted, in closed form, so the number moves with the features and nothing else.

Labels. Records carry a `segmentation` (int [H, W] in the pixels of the record's image: -1
background, else a class in 0..31 = colour_index * len(SHAPES) + shape_index, as
`synthetic.multi_example` writes it; `synthetic:shapes_multi` keeps it in its records). It is taken
through the evaluator's crop (`image_mode`, `transforms.crop_box`) and resized to the model's image
size by nearest neighbour at pixel centres (`pixel_labels`), so a label lies where its pixel lands
in the decoded image. `synthetic:` sets render at the model's image size, so for them the resize
is the identity and the labels are exact. Each patch of the model's grid (image_size / patch_size
per side) takes the object class covering most of its pixels if that covers a quarter of them, else
background, class 32 (`BACKGROUND` = len(CLASS_NAMES)); ties go to the lower class (`patch_labels`).

Features: the vision tower's tokens (`encoders.encode_vision(model.vision, image)[0]`, float32),
without the class token a ViT puts first when it has one (`drop_class_token`): [B, g*g, C], under
`jax.jit` once per shape, gathered to every host (`data.gather`).

The probe (`LinearHead`): ridge regression on one-hot targets, fitted on every patch of the first
`train_examples` images of `train_source`, with `fewshot.Ridge` (big_vision's `fewshot_lsr` form:
features standardised with the training patches' mean and std, a bias column of 100, targets in
{-1, +1}, W = (X^T X + l2 I)^-1 X^T Y, in float64), a fixed `l2` (default 1.0: light, since there are
far more training patches than feature dims; it keeps the solve well posed for collinear features).
A test patch is classified by argmax over the 33 joint classes (colour x shape, and background).
Deterministic: no sampling anywhere.

Metrics, on every patch of the first `num_examples` images of `data.source`:
  * `miou`: the standard semantic-segmentation mean IoU, IoU_c = TP / (TP + FP + FN) from the
    confusion matrix summed over the whole set, averaged over the classes present in the ground
    truth (background included). A class predicted but absent from the ground truth is not
    averaged, but its false positives still cost the true classes of those patches.
  * `accuracy`: the fraction of patches whose joint class is right.
  * `color_miou`, `shape_miou`: the same predictions reduced to colour (8 + background) and shape
    (4 + background) before the confusion matrix, mIoU as above.

Shape legend: B batch, T tokens, N patches per image (g*g), C feature dim, S image size,
P patch pixels per side, K classes, M images.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlmjax.data import synthetic, transforms
from vlmjax.errors import ConfigError, DataError
from vlmjax.evals import common, fewshot

BACKGROUND = len(synthetic.CLASS_NAMES)   # the class of background patches: 32
NUM_CLASSES = BACKGROUND + 1              # 33: colour x shape, and background
COLOR_OF = np.array([c // len(synthetic.SHAPES) for c in range(BACKGROUND)] + [len(synthetic.COLORS)])
SHAPE_OF = np.array([c % len(synthetic.SHAPES) for c in range(BACKGROUND)] + [len(synthetic.SHAPES)])
NEEDS_SEGMENTATION = "dense_probe needs records with a 'segmentation' (int [H, W], -1 background)"


# --- labels ----------------------------------------------------------------------------------------

def pixel_labels(record: dict, image_size: int, image_mode: str, where: str) -> np.ndarray:
  """int8 [S, S]: the record's segmentation as the decoder crops (`image_mode`) and resizes its image
  (nearest neighbour at pixel centres), background as `BACKGROUND`. DataError (naming `where`) for a
  segmentation whose size is not the image's or whose classes are out of range."""
  seg_HxW = np.asarray(record["segmentation"])
  w, h = transforms.original_size(record["image"])
  if seg_HxW.shape != (h, w):
    raise DataError(f"{where}: record {record.get('key')} has a segmentation of shape {seg_HxW.shape}, "
                    f"its image is {h}x{w}; they must match")
  x0, y0, cw, ch = transforms.crop_box(w, h, image_mode, None)
  centres_S = np.arange(image_size) + 0.5
  rows_S = y0 + np.minimum((centres_S * ch / image_size).astype(np.int64), ch - 1)
  cols_S = x0 + np.minimum((centres_S * cw / image_size).astype(np.int64), cw - 1)
  lab_SxS = seg_HxW[rows_S[:, None], cols_S[None, :]].astype(np.int64)
  if lab_SxS.min() < -1 or lab_SxS.max() >= BACKGROUND:
    raise DataError(f"{where}: record {record.get('key')} has segmentation values in [{lab_SxS.min()}, "
                    f"{lab_SxS.max()}]; valid: -1 (background) and 0..{BACKGROUND - 1} (the shapes classes)")
  return np.where(lab_SxS < 0, BACKGROUND, lab_SxS).astype(np.int8)


def patch_labels(pixels_MxSxS: np.ndarray, grid: int, min_cover: float = 0.25) -> np.ndarray:
  """int64 [M, grid*grid]: each patch's label, patches in row-major order as the ViT flattens them: the
  object class covering most of its pixels (ties: the lower class) when that class covers at least
  `min_cover` of them, else background. (A plain majority would call nearly every patch background:
  a small shapes_multi object covers about 70 pixels, spread over several 64-pixel patches.)"""
  m, s = pixels_MxSxS.shape[0], pixels_MxSxS.shape[1]
  p = s // grid
  patches_MxNxPP = (pixels_MxSxS.reshape(m, grid, p, grid, p).transpose(0, 1, 3, 2, 4)
                    .reshape(m, grid * grid, p * p).astype(np.int64))
  counts_MxNxK = np.stack([(patches_MxNxPP == k).sum(-1) for k in range(BACKGROUND)], axis=-1)
  best_MxN = np.argmax(counts_MxNxK, axis=-1)
  covered_MxN = np.take_along_axis(counts_MxNxK, best_MxN[..., None], axis=-1)[..., 0]
  return np.where(covered_MxN >= min_cover * p * p, best_MxN, BACKGROUND)


# --- the probe and its scores: pure NumPy -------------------------------------------------------------

class LinearHead:
  """The ridge-regression head of training patch features [N, C] and labels [N] (module docstring)."""

  def __init__(self, x_NxC: np.ndarray, y_N: np.ndarray, l2: float, num_classes: int = NUM_CLASSES):
    self.ridge = fewshot.Ridge(x_NxC, np.asarray(y_N, np.int64), num_classes)
    r = self.ridge   # scores = inputs @ lhs diag(1 / (e + l2)) rhs, folded into one [C+1, K] matrix
    self.w_DxK = (r.lhs_DxR / (r.eigs_R + l2)) @ r.rhs_RxK

  def predict(self, x_NxC: np.ndarray) -> np.ndarray:
    """Predicted classes [N]."""
    return np.argmax(self.ridge.inputs(x_NxC) @ self.w_DxK, axis=1)


def confusion(true_N: np.ndarray, pred_N: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
  """int64 [K, K]: rows the true class, columns the predicted one."""
  flat = np.asarray(true_N, np.int64) * num_classes + np.asarray(pred_N, np.int64)
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def reduce(conf_KxK: np.ndarray, mapping_K: np.ndarray) -> np.ndarray:
  """The confusion matrix of the classes mapped by `mapping_K` (joint class -> colour or shape)."""
  k = int(mapping_K.max()) + 1
  out = np.zeros((k, k), np.int64)
  np.add.at(out, (mapping_K[:, None], mapping_K[None, :]), conf_KxK)
  return out


def miou(conf_KxK: np.ndarray) -> float:
  """Mean over the classes present in the ground truth (rows with a count) of TP / (TP + FP + FN)."""
  tp_K = np.diag(conf_KxK).astype(np.float64)
  true_K, pred_K = conf_KxK.sum(axis=1), conf_KxK.sum(axis=0)
  present = true_K > 0
  if not present.any():
    return 0.0
  return float(np.mean(tp_K[present] / (true_K + pred_K - tp_K)[present]))


def scores(conf_KxK: np.ndarray) -> dict[str, float]:
  """{"miou", "accuracy", "color_miou", "shape_miou"} of a joint-class confusion matrix."""
  total = max(1, int(conf_KxK.sum()))
  return {"miou": miou(conf_KxK), "accuracy": float(np.trace(conf_KxK)) / total,
          "color_miou": miou(reduce(conf_KxK, COLOR_OF)), "shape_miou": miou(reduce(conf_KxK, SHAPE_OF))}


# --- features --------------------------------------------------------------------------------------

def drop_class_token(tokens_BxTxC: jax.Array) -> jax.Array:
  """The patch tokens [B, g*g, C]: a ViT with a class token puts it first (T = g*g + 1); a count that
  is neither a square nor one more is a ConfigError."""
  t = tokens_BxTxC.shape[1]
  if math.isqrt(t) ** 2 == t:
    return tokens_BxTxC
  if t > 1 and math.isqrt(t - 1) ** 2 == t - 1:
    return tokens_BxTxC[:, 1:]
  raise ConfigError(f"dense_probe needs the vision tower's tokens on a square patch grid (plus at most a "
                    f"class token first), got {t} tokens")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def patch_tokens(params, image_BxSxSx3: jax.Array, *, graphdef) -> jax.Array:
  """float32 [B, N, C]: the frozen vision tower's patch tokens (inference: no patch dropout)."""
  from flax import nnx  # noqa: PLC0415 -- configs import this module through the registry: keep it light
  from vlmjax.models import encoders  # noqa: PLC0415
  model = nnx.merge(graphdef, params)
  vision = getattr(model, "vision", None)
  if vision is None:
    raise ConfigError(f"dense_probe needs a model with a vision tower (.vision); {type(model).__name__} has none")
  return drop_class_token(encoders.encode_vision(vision, image_BxSxSx3)[0]).astype(jnp.float32)


# --- the evaluator ---------------------------------------------------------------------------------

def config(source: str, *, train_source: str = "synthetic:shapes_multi:train", batch_size: int = 64,
           every: int = 0, num_examples: int = 0, image_mode: str = "resize", params: str = "params",
           train_examples: int = 256, l2: float = 1.0) -> ml_collections.ConfigDict:
  """source: the segmented test set (`num_examples` its first N; 0: all). train_source: the
  segmented set the head is fitted on, on every patch of its first `train_examples` images (>= 1);
  l2: the ridge strength (> 0)."""
  c = common.fields("dense_probe", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode, params=params)
  c.train_source = train_source
  c.train_examples = train_examples
  c.l2 = float(l2)
  return c


def check(where: str, ev) -> None:
  """One-line ConfigErrors for the probe's own fields."""
  if not isinstance(ev.train_source, str) or not ev.train_source:
    raise ConfigError(f"{where}.train_source is empty; set it to a segmented set the head is fitted on, "
                      f"e.g. synthetic:shapes_multi:train")
  n = ev.train_examples
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ConfigError(f"{where}.train_examples must be an int >= 1 (training images; every patch is a row), "
                      f"got {n!r}")
  l2 = ev.l2
  if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 < l2 < float("inf"):
    raise ConfigError(f"{where}.l2={l2!r} must be a finite number > 0 (the ridge strength, e.g. 1.0)")


def _segmentations(ds, spec: str, image_size: int, image_mode: str, field: str) -> np.ndarray:
  """int8 [M, S, S] pixel labels of every example of `ds` (opened from `spec`); a one-line
  ConfigError naming `field` and `spec` when its records carry no segmentation."""
  if ds.source[0].get("segmentation") is None:
    raise ConfigError(f"evals.{ds.name}.{field}={spec!r}: its records carry no 'segmentation'; "
                      f"{NEEDS_SEGMENTATION}, e.g. synthetic:shapes_multi")
  where = f"evals.{ds.name}.{field}"
  return np.stack([pixel_labels(ds.source[i], image_size, image_mode, where) for i in range(ds.num_examples)])


class DenseProbe:
  """The prepared `dense_probe` evaluator: both sets opened, their pixel labels read once."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    self.test = data.EvalSet(name, ev, ctx)
    self.train = fewshot._train_set(name, ev, ctx)  # messages name train_source / train_examples
    self.test_pix = _segmentations(self.test, ev.data.source, ctx.image_size, ev.image_mode, "data.source")
    self.train_pix = _segmentations(self.train, ev.train_source, ctx.image_size, ev.image_mode, "train_source")
    self.l2 = float(ev.l2)

  def features(self, ds, pixels_MxSxS: np.ndarray, graphdef, params, what: str):
    """Yields (features [n, N, C], patch labels [n, N]) per batch of `ds`, on every host."""
    from vlmjax.evals import data  # noqa: PLC0415
    bar, start = data.counter(ds, f"patch features of {what} images", ds.num_examples, "images"), 0
    for images, n in ds.image_batches():
      feats_BxNxC = data.gather(patch_tokens(params, images, graphdef=graphdef), n)
      grid = math.isqrt(feats_BxNxC.shape[1])
      if pixels_MxSxS.shape[1] % grid:
        raise ConfigError(f"evals.{ds.name}: the image size {pixels_MxSxS.shape[1]} is not a whole number "
                          f"of the tower's {grid} patches per side")
      yield feats_BxNxC, patch_labels(pixels_MxSxS[start:start + n], grid)
      start += n
      bar.update(n)
    bar.close()

  def evaluate(self, graphdef, params) -> dict[str, float]:
    """Fits the head on the training patches, then scores the test patches batch by batch (only the
    confusion matrix is kept of the test set)."""
    train = list(self.features(self.train, self.train_pix, graphdef, params, "training"))
    x_NxC = np.concatenate([f.reshape(-1, f.shape[-1]) for f, _ in train])
    head = LinearHead(x_NxC, np.concatenate([y.ravel() for _, y in train]), self.l2)
    conf_KxK = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for feats_BxNxC, y_BxN in self.features(self.test, self.test_pix, graphdef, params, "test"):
      conf_KxK += confusion(y_BxN.ravel(), head.predict(feats_BxNxC.reshape(-1, feats_BxNxC.shape[-1])))
    return scores(conf_KxK)


prepare = DenseProbe
