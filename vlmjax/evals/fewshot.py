"""Few-shot linear probe: closed-form ridge regression on frozen image features, as big_vision's
`fewshot_lsr` evaluator does it, with the L2 strength chosen on held-out training examples.

Features: the model method named by `features`, by default `encode_image`: for CoCa and the
two-tower models that is the L2-normalised, projected image embedding, for the captioner the
L2-normalised mean of its image tokens. No model here exposes its pre-projection features (big_vision
probes `pre_logits`); a model that gains such a method (`[B, H, W, 3] -> [B, D]`) is probed through
it with `features=<method>`, nothing else changes.

For each seed s in 0..seeds-1 every class's training examples are permuted with
`np.random.default_rng(s)` (one permutation per class, in class order); the k-shot support set is
the first k of each class, the held-out set the last `holdout` of each class (disjoint from the
largest support set). On the support set, as big_vision:
  * features are standardised per dimension with the support set's mean and std (+1e-5), and the
    same statistics are applied to held-out and test features;
  * a constant column of 100 is appended (the bias: regularised like the rest, but large, so that
    its weight is small and the penalty on it negligible);
  * targets are one-hot rescaled to {-1, +1}; W = (X^T X + l2 I)^-1 X^T Y, solved once per support
    set by an eigendecomposition of X^T X (or of X X^T when there are fewer rows than columns) so
    that every l2 of the grid costs a matrix product;
  * a test image is classified by argmax(x W).
l2 is the value of `reg_grid` with the best held-out accuracy (ties: the largest l2). big_vision
itself uses a fixed l2 = 2**10 and no held-out set: `reg_grid=(1024.0,)` with `holdout=0`
reproduces it (its per-seed accuracies; big_vision logs each seed, this reports mean and std).

Metrics, for each k in `shots`: `{k}shot` (test accuracy, mean over seeds), `{k}shot_std` (its
standard deviation over seeds, ddof 0), `{k}shot_log2reg` (mean log2 of the chosen l2).

Config: `data.source` is the test set (`num_examples` its first N), `train_source` the labelled set
the support and held-out examples are drawn from (`train_examples` its first N; 0: all; only the
drawn examples are embedded). `--config.evals.NAME=fewshot:TEST_SOURCE` needs
`--config.evals.NAME.train_source=TRAIN_SOURCE` as well.

Shape legend: N examples, D feature dim, K classes, R eigenvalues, H held-out examples.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from vlmjax.errors import ConfigError, UserError
from vlmjax.evals import common

BIAS = 100.0
STD_EPS = 1e-5
SHOTS = (1, 5, 10, 25)
REG_GRID = tuple(2.0**i for i in range(-10, 20))
NEEDS_LABELS = "the few-shot probe needs a labelled set"


# --- the probe: pure NumPy on features --------------------------------------------------------------

def permutations(labels_N: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
  """Each class's example indices, permuted by `seed` (big_vision's draw of the shots)."""
  rng = np.random.default_rng(seed)
  return [rng.permutation(np.flatnonzero(labels_N == c)) for c in range(num_classes)]


def check_counts(labels_N: np.ndarray, num_classes: int, shots: Sequence[int], holdout: int,
                 where: str = "fewshot") -> None:
  """A one-line ConfigError naming `{where}.shots` unless every class has max(shots) + holdout examples."""
  if not len(shots) or min(shots) < 1:
    raise ConfigError(f"{where}.shots={tuple(shots)!r} must be a non-empty tuple of ints > 0 (examples per class)")
  counts = np.bincount(labels_N, minlength=num_classes)
  need, smallest = max(shots) + holdout, int(np.argmin(counts))
  if counts[smallest] < need:
    shown = tuple(int(k) for k in shots)
    raise ConfigError(f"{where}.shots={shown!r}: {max(shown)} shots + holdout={holdout} need {need} training "
                      f"examples of every class, but class {smallest} has {counts[smallest]}; use fewer shots "
                      f"or more training examples")


class Ridge:
  """The ridge regression of one support set, solvable for any l2 at the cost of a product."""

  def __init__(self, x_NxD: np.ndarray, y_N: np.ndarray, num_classes: int):
    x_NxD = np.asarray(x_NxD, np.float64)
    self.mean_D, self.std_D = x_NxD.mean(axis=0), x_NxD.std(axis=0) + STD_EPS
    x = self.inputs(x_NxD)
    t_NxK = 2.0 * np.eye(num_classes)[y_N] - 1.0
    if x.shape[0] >= x.shape[1]:   # (X^T X + l2)^-1 X^T Y = Q diag(1 / (e + l2)) Q^T X^T Y
      self.eigs_R, q = np.linalg.eigh(x.T @ x)
      self.lhs_DxR, self.rhs_RxK = q, q.T @ (x.T @ t_NxK)
    else:                          # X^T (X X^T + l2)^-1 Y = X^T Q diag(1 / (e + l2)) Q^T Y
      self.eigs_R, q = np.linalg.eigh(x @ x.T)
      self.lhs_DxR, self.rhs_RxK = x.T @ q, q.T @ t_NxK

  def inputs(self, x_NxD: np.ndarray) -> np.ndarray:
    """Standardised with the support set's statistics, with the bias column: [N, D+1]."""
    x = (np.asarray(x_NxD, np.float64) - self.mean_D) / self.std_D
    return np.concatenate([x, np.full((len(x), 1), BIAS)], axis=1)

  def predict(self, x_NxD: np.ndarray, l2: float) -> np.ndarray:
    """Predicted classes [N]."""
    return np.argmax(self._scores(self.inputs(x_NxD) @ self.lhs_DxR, l2), axis=1)

  def choose(self, x_HxD: np.ndarray, y_H: np.ndarray, grid: Sequence[float]) -> float:
    """The l2 of `grid` with the best accuracy on (x_HxD, y_H); ties go to the largest l2."""
    if len(grid) == 1:
      return float(grid[0])
    proj_HxR = self.inputs(x_HxD) @ self.lhs_DxR
    acc = [np.mean(np.argmax(self._scores(proj_HxR, l2), axis=1) == y_H) for l2 in grid]
    best = max(acc)
    return float(max(l2 for l2, a in zip(grid, acc) if a == best))

  def _scores(self, proj_NxR: np.ndarray, l2: float) -> np.ndarray:
    return (proj_NxR / (self.eigs_R + l2)) @ self.rhs_RxK


def probe(train_x, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, shots: Sequence[int] = SHOTS,
          seeds: int = 3, reg_grid: Sequence[float] = REG_GRID, holdout: int = 5, num_classes: int | None = None,
          where: str = "fewshot") -> dict[str, float]:
  """{"{k}shot", "{k}shot_std", "{k}shot_log2reg"} for k in `shots` (see the module docstring).

  train_x: [N, D] features of the training set (or anything indexable by an index array the same
  way), train_y [N] their labels in 0..K-1; test_x [T, D], test_y [T]. Deterministic."""
  train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
  if num_classes is None:
    num_classes = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
  if len(reg_grid) > 1 and holdout < 1:
    raise ConfigError(f"{where}.reg_grid has {len(reg_grid)} values but holdout={holdout}: choosing one "
                      f"needs held-out examples")
  check_counts(train_y, num_classes, shots, holdout, where)
  acc, l2s = {k: [] for k in shots}, {k: [] for k in shots}
  for seed in range(seeds):
    perms = permutations(train_y, num_classes, seed)
    held = np.concatenate([p[len(p) - holdout:] for p in perms]) if holdout else np.zeros(0, np.int64)
    held_x = train_x[held] if holdout else None
    for k in shots:
      support = np.concatenate([p[:k] for p in perms])
      ridge = Ridge(train_x[support], train_y[support], num_classes)
      l2 = ridge.choose(held_x, train_y[held], reg_grid)
      acc[k].append(float(np.mean(ridge.predict(test_x, l2) == test_y)))
      l2s[k].append(float(np.log2(l2)))
  out = {}
  for k in shots:
    out.update({f"{k}shot": float(np.mean(acc[k])), f"{k}shot_std": float(np.std(acc[k])),
                f"{k}shot_log2reg": float(np.mean(l2s[k]))})
  return out


def drawn(train_y: np.ndarray, num_classes: int, *, shots: Sequence[int], seeds: int, holdout: int) -> np.ndarray:
  """The sorted indices `probe` reads from train_x: every seed's largest support set and held-out set."""
  out = []
  for seed in range(seeds):
    for p in permutations(train_y, num_classes, seed):
      out += [p[:max(shots)], p[len(p) - holdout:] if holdout else p[:0]]
  return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


class Rows:
  """The rows of a training set's features, of which only `indices` were embedded."""

  def __init__(self, features_UxD: np.ndarray, indices_U: np.ndarray, size: int):
    self.features_UxD = features_UxD
    self.position_N = np.full(size, -1, np.int64)
    self.position_N[indices_U] = np.arange(len(indices_U))

  def __getitem__(self, index: np.ndarray) -> np.ndarray:
    pos = self.position_N[index]
    if (pos < 0).any():
      raise IndexError("a training example that was not embedded")
    return self.features_UxD[pos]


# --- the evaluator ------------------------------------------------------------------------------------

def config(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", train_source: str = "", train_examples: int = 0,
           shots: Sequence[int] = SHOTS, seeds: int = 3, holdout: int = 5, reg_grid: Sequence[float] = REG_GRID,
           features: str = "encode_image") -> ml_collections.ConfigDict:
  """source: the test set. train_source: the labelled set the probe is fitted on (required);
  train_examples: its first N (0: all). shots: examples per class; seeds: draws of them; holdout:
  held-out examples per class for choosing l2 among reg_grid (0: reg_grid must be one value);
  features: the model method giving [B, D] image features."""
  c = common.fields("fewshot", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode)
  c.train_source = train_source
  c.train_examples = train_examples
  c.shots = tuple(shots)
  c.seeds = seeds
  c.holdout = holdout
  c.reg_grid = tuple(float(r) for r in reg_grid)
  c.features = features
  return c


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check(where: str, ev) -> None:
  """One-line ConfigErrors for the probe's own fields."""
  if not isinstance(ev.train_source, str) or not ev.train_source:
    raise ConfigError(f"{where}.train_source is empty; set it to the labelled set the probe is fitted on, "
                      f"e.g. --config.{where}.train_source=synthetic:shapes:train")
  shots = ev.shots
  if (not isinstance(shots, (tuple, list)) or not shots or not all(_is_int(k) and k > 0 for k in shots)
      or len(set(shots)) != len(shots)):
    raise ConfigError(f"{where}.shots={shots!r} must be a non-empty tuple of distinct ints > 0 (examples per class)")
  for key, low in (("seeds", 1), ("holdout", 0), ("train_examples", 0)):
    if not _is_int(ev[key]) or ev[key] < low:
      raise ConfigError(f"{where}.{key} must be an int >= {low}, got {ev[key]!r}")
  grid = ev.reg_grid
  if (not isinstance(grid, (tuple, list)) or not grid
      or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < float("inf") for r in grid)):
    raise ConfigError(f"{where}.reg_grid={grid!r} must be a non-empty tuple of finite numbers > 0 (l2 strengths)")
  if len(grid) > 1 and ev.holdout < 1:
    raise ConfigError(f"{where}.reg_grid has {len(grid)} values but holdout=0: choosing among them needs "
                      f"held-out examples; set holdout >= 1 or one value (big_vision: (1024.0,))")
  if not isinstance(ev.features, str) or not ev.features.isidentifier():
    raise ConfigError(f"{where}.features={ev.features!r} must name a model method (e.g. encode_image)")


def _labels(ds, where: str) -> np.ndarray:
  rec = ds.source[0] if ds.num_examples else {}
  if rec.get("label") is None:
    raise ConfigError(f"{where}={ds.source!r}: its records carry no 'label' field; {NEEDS_LABELS}")
  return ds.labels()


def _train_set(name: str, ev, ctx):
  """The EvalSet of `train_source` (its first `train_examples`), messages naming those fields."""
  from vlmjax.evals import data  # noqa: PLC0415
  where = f"evals.{name}"
  tr = ev.copy_and_resolve_references()
  tr.data.source, tr.num_examples = ev.train_source, ev.train_examples
  try:
    return data.EvalSet(name, tr, ctx)
  except UserError as e:
    text = str(e).replace(f"{where}.data.source", f"{where}.train_source")
    raise type(e)(text.replace(f"{where}.num_examples", f"{where}.train_examples")) from None


def _embed(ds, graphdef, params, method: str, what: str) -> np.ndarray:
  """`method`'s features of every example of `ds`: [N, D] float32 on the host."""
  from vlmjax.evals import data  # noqa: PLC0415
  feats = data.embed_images(ds, graphdef, params, method, f"{what} images")
  if feats.ndim != 2:
    raise ConfigError(f"evals.{ds.name}.features={method!r} gives {feats.shape[1:]} per image; the probe "
                      f"needs one feature vector [D]")
  return feats


class FewShot:
  """The prepared `fewshot` evaluator: test labels, the training labels and the drawn examples."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    where = f"evals.{name}"
    self.where, self.ev = where, ev
    self.test = data.EvalSet(name, ev, ctx)
    self.train = _train_set(name, ev, ctx)
    data.require(self.test, ev.features)
    self.test_y = _labels(self.test, f"{where}.data.source")
    self.train_y = _labels(self.train, f"{where}.train_source")
    self.num_classes = int(max(self.train_y.max(initial=-1), self.test_y.max(initial=-1))) + 1
    check_counts(self.train_y, self.num_classes, ev.shots, ev.holdout, where)
    self.indices = drawn(self.train_y, self.num_classes, shots=ev.shots, seeds=ev.seeds, holdout=ev.holdout)
    # Only the drawn examples are embedded (ImageNet: seeds x 1000 x 30 of 1.28M).
    self.train.restrict(self.indices)

  def evaluate(self, graphdef, params) -> dict[str, float]:
    ev = self.ev
    train_x = Rows(_embed(self.train, graphdef, params, ev.features, "training"), self.indices, len(self.train_y))
    test_x = _embed(self.test, graphdef, params, ev.features, "test")
    return probe(train_x, self.train_y, test_x, self.test_y, shots=tuple(ev.shots), seeds=ev.seeds,
                 reg_grid=tuple(ev.reg_grid), holdout=ev.holdout, num_classes=self.num_classes, where=self.where)


prepare = FewShot
