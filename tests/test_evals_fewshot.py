"""The few-shot linear probe: its closed form vs a plain NumPy ridge regression written from the
formulas, its config checks, and one run through the registry on a micro CoCa and the shapes set."""

import os

import jax
import numpy as np
import pytest

from conftest import random_params, MICRO, ROOT
from vlmjax import config, errors, sharding, train_state
from vlmjax.data import synthetic
from vlmjax.evals import data, defaults, fewshot, registry
from vlmjax.evals.suite import prepare_all


def reference(train_x, train_y, test_x, test_y, *, shots, seeds, grid, holdout, num_classes):
  """big_vision's few-shot least squares, solved directly for each l2 (no eigendecomposition):
  standardise with the support set's statistics, a constant column of 100, targets in {-1, 1},
  W = (X^T X + l2 I)^-1 X^T Y; l2 by held-out accuracy (ties: the largest)."""
  acc = {k: [] for k in shots}
  l2s = {k: [] for k in shots}
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.where(train_y == c)[0]) for c in range(num_classes)]
    held = np.concatenate([p[len(p) - holdout:] for p in perms]) if holdout else np.zeros(0, int)
    for k in shots:
      support = np.concatenate([p[:k] for p in perms])
      x = train_x[support].astype(np.float64)
      mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5

      def design(z, mean=mean, std=std):
        return np.hstack([(z - mean) / std, np.full((len(z), 1), 100.0)])
      X = design(x)
      Y = np.where(np.arange(num_classes)[None] == train_y[support][:, None], 1.0, -1.0)

      def accuracy(z, labels, l2, X=X, Y=Y, design=design):
        W = np.linalg.solve(X.T @ X + l2 * np.eye(X.shape[1]), X.T @ Y)
        return np.mean(np.argmax(design(z.astype(np.float64)) @ W, axis=1) == labels)
      if holdout:
        held_acc = [accuracy(train_x[held], train_y[held], l2) for l2 in grid]
        l2 = max(l2 for l2, a in zip(grid, held_acc) if a == max(held_acc))
      else:
        l2 = grid[0]
      acc[k].append(accuracy(test_x, test_y, l2))
      l2s[k].append(np.log2(l2))
  return {m: v for k in shots for m, v in ((f"{k}shot", np.mean(acc[k])), (f"{k}shot_std", np.std(acc[k])),
                                           (f"{k}shot_log2reg", np.mean(l2s[k])))}


def features(seed, num_classes=8, dim=24):
  """Noisy class clusters, classes of unequal size (12..30 training examples)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim))
  train_y = rng.permutation(np.repeat(np.arange(num_classes), rng.integers(12, 31, num_classes)))
  test_y = rng.integers(0, num_classes, 300)
  def draw(y):
    return (centres[y] + rng.normal(scale=1.6, size=(len(y), dim))).astype(np.float32)
  return draw(train_y), train_y, draw(test_y), test_y


@pytest.mark.parametrize("seed, holdout, grid, seeds", [
    (0, 4, fewshot.REG_GRID, 3),   # l2 chosen on held-out examples
    (1, 3, fewshot.REG_GRID, 2),
    (2, 0, (1024.0,), 3),          # big_vision's fixed l2 = 2**10
])
def test_probe_equals_a_direct_numpy_ridge_regression(seed, holdout, grid, seeds):
  train_x, train_y, test_x, test_y = features(seed)
  shots = (1, 3, 5, 8)  # 1 shot: fewer rows (8) than columns (25), the X X^T form; 5 shots: X^T X
  got = fewshot.probe(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, reg_grid=grid, holdout=holdout)
  want = reference(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, grid=grid, holdout=holdout,
                   num_classes=8)
  assert list(got) == [f"{k}shot{s}" for k in shots for s in ("", "_std", "_log2reg")]
  assert got == pytest.approx(want, abs=1e-12)
  assert all("@" not in m for m in got)
  assert 0.2 < got["1shot"] < got["8shot"] <= 1 and got["8shot_std"] >= 0
  assert got == fewshot.probe(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, reg_grid=grid,
                              holdout=holdout)  # deterministic


def test_probe_rejects_too_many_shots_and_reads_only_the_drawn_rows():
  train_x, train_y, test_x, test_y = features(3)
  smallest = np.bincount(train_y).min()
  with pytest.raises(errors.ConfigError, match=rf"evals.f.shots=\(1, {smallest}\): .* class \d+ has {smallest}"):
    fewshot.probe(train_x, train_y, test_x, test_y, shots=(1, smallest), holdout=1, where="evals.f")
  with pytest.raises(errors.ConfigError, match=r"evals.f.shots=\(0, 2\) must be"):
    fewshot.probe(train_x, train_y, test_x, test_y, shots=(0, 2), where="evals.f")
  with pytest.raises(errors.ConfigError, match="reg_grid has 30 values but holdout=0"):
    fewshot.probe(train_x, train_y, test_x, test_y, holdout=0, shots=(1,))
  kw = dict(shots=(2, 5), seeds=3, holdout=2)
  idx = fewshot.drawn(train_y, 8, **kw)
  assert len(idx) < len(train_y)
  rows = fewshot.Rows(train_x[idx], idx, len(train_y))
  assert fewshot.probe(rows, train_y, test_x, test_y, **kw) == fewshot.probe(train_x, train_y, test_x, test_y, **kw)
  with pytest.raises(IndexError):
    rows[np.setdiff1d(np.arange(len(train_y)), idx)[:1]]


@pytest.mark.parametrize("field, value, message", [
    ("shots", (0, 5), "evals.bad.shots=(0, 5) must be a non-empty tuple of distinct ints > 0"),
    ("shots", (5, 5), "evals.bad.shots=(5, 5) must be"),
    ("shots", (), "evals.bad.shots=() must be"),
    ("seeds", 0, "evals.bad.seeds must be an int >= 1, got 0"),
    ("holdout", -1, "evals.bad.holdout must be an int >= 0"),
    ("train_examples", -2, "evals.bad.train_examples must be an int >= 0"),
    ("reg_grid", (), "evals.bad.reg_grid=() must be a non-empty tuple of finite numbers > 0"),
    ("reg_grid", (1.0, -2.0), "evals.bad.reg_grid=(1.0, -2.0) must be"),
    ("holdout", 0, "evals.bad.reg_grid has 30 values but holdout=0"),
    ("train_source", "", "evals.bad.train_source is empty"),
    ("features", "", "evals.bad.features='' must name a model method"),
])
def test_config_checks_are_one_line(field, value, message):
  ev = defaults.fewshot("synthetic:shapes:validation", train_source="synthetic:shapes:train")
  registry.validate("ok", ev)
  ev[field] = value
  with pytest.raises(errors.ConfigError) as e:
    registry.validate("bad", ev)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _cfg(**options):
  cfg = config.load(os.path.join(ROOT, "configs/coca_tiny.py:evals=0"), MICRO)
  cfg.evals.fs = registry.new_evaluator("fs", "fewshot:synthetic:shapes:validation")
  options = {"train_source": "synthetic:shapes:train", "train_examples": 400, "batch_size": 32,
             "num_examples": 64, "shots": (1, 2), "seeds": 2, "holdout": 2, **options}
  for key, value in options.items():
    cfg.evals.fs[key] = value
  return cfg


def test_bad_sources_and_shots_fail_before_training(tmp_path):
  paths = synthetic.write_tar_shards(str(tmp_path / "tar"), 1, 16)  # image-text shards: no labels
  cases = [
      (dict(shots=(1, 20)), "evals.fs.shots=(1, 20): 20 shots + holdout=2 need 22 training examples of every class"),
      (dict(train_source=f"tar:{paths[0]}", train_examples=0), "carry no 'label' field; the few-shot probe needs"),
      (dict(train_examples=10**6), "evals.fs.train_examples=1000000 exceeds the 100000 examples"),
      (dict(train_source="synthetic:shapes:tran"), "evals.fs.train_source: unknown split 'tran'"),
      (dict(features="image_features"), "evals.fs needs a model with image_features()"),
  ]
  for options, message in cases:
    with pytest.raises(errors.UserError) as e:
      prepare_all(_cfg(**options))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  cfg = _cfg(num_examples=16)
  cfg.evals.fs.data.source = f"tar:{paths[0]}"
  with pytest.raises(errors.ConfigError, match=r"^evals.fs.data.source=.*carry no 'label' field; the few-shot"):
    prepare_all(cfg)


def test_fewshot_on_a_micro_coca_equals_the_probe_on_all_training_features():
  cfg = _cfg()
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  params = random_params(s)
  suite = prepare_all(cfg, s.mesh)
  assert len(suite.prepared["fs"].indices) < 400  # only the drawn training examples are embedded
  metrics = suite.run(s.graphdef, params, step=1, final=True)
  got = {k[len("eval/fs/"):]: v for k, v in metrics.items() if not k.endswith("/seconds")}
  assert set(got) == {f"{k}shot{s}" for k in (1, 2) for s in ("", "_std", "_log2reg")}

  ctx = data.context(cfg, s.mesh)
  train = data.EvalSet("fs", defaults.retrieval("synthetic:shapes:train", batch_size=32, num_examples=400), ctx)
  test = data.EvalSet("fs", cfg.evals.fs, ctx)
  want = fewshot.probe(data.embed_images(train, s.graphdef, params), train.labels(),
                       data.embed_images(test, s.graphdef, params), test.labels(), shots=(1, 2), seeds=2, holdout=2)
  assert got == pytest.approx(want, abs=1e-12)
  assert 0 <= got["1shot"] <= 1 and got["2shot"] > 1 / 32  # better than chance on the shapes classes
