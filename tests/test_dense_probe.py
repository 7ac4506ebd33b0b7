"""The dense-feature probe (vlmjax/evals/dense_probe.py): its ridge head vs a direct float64 NumPy
solve, mIoU and patch labels on hand-computed examples, oracle features solving the task, one run
through the registry on a fresh micro SigLIP 2, and its one-line config errors."""

import os

import jax
import numpy as np
import pytest

from conftest import random_params, ROOT
from vlmjax import config, errors, sharding, train_state
from vlmjax.data import sources, synthetic
from vlmjax.evals import defaults, dense_probe, registry
from vlmjax.evals.suite import prepare_all

SPEC = os.path.join(ROOT, "configs/siglip2_tiny.py")
SMALL = (("batch_size", "16"), ("model.vision.depth", "1"), ("model.vision.width", "32"),
         ("model.vision.heads", "2"), ("model.vision.mlp_dim", "64"), ("model.text.depth", "1"),
         ("model.text.width", "32"), ("model.text.heads", "2"), ("model.text.mlp_dim", "64"),
         ("model.decoder.depth", "1"), ("model.decoder.width", "32"), ("model.decoder.heads", "2"),
         ("model.decoder.mlp_dim", "64"), ("model.embed_dim", "32"))


# --- numerics ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, dims, l2", [(300, 24, 1.0), (20, 40, 3.0)])  # X^T X and X X^T forms
def test_ridge_head_equals_a_direct_float64_solve(rows, dims, l2):
  rng = np.random.default_rng(rows)
  x = (rng.normal(size=(rows, dims)) * rng.uniform(0.1, 5, dims) + rng.normal(size=dims)).astype(np.float32)
  y = rng.integers(0, 7, rows)
  head = dense_probe.LinearHead(x, y, l2, num_classes=7)
  z = x.astype(np.float64)
  design = np.hstack([(z - z.mean(0)) / (z.std(0) + 1e-5), np.full((rows, 1), 100.0)])
  targets = np.where(np.arange(7)[None] == y[:, None], 1.0, -1.0)
  want = np.linalg.solve(design.T @ design + l2 * np.eye(dims + 1), design.T @ targets)
  np.testing.assert_allclose(head.w_DxK, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
  test = rng.normal(size=(50, dims)).astype(np.float32)
  test_design = np.hstack([(test - z.mean(0)) / (z.std(0) + 1e-5), np.full((50, 1), 100.0)])
  assert np.array_equal(head.predict(test), np.argmax(test_design @ want, axis=1))


def test_miou_accuracy_and_reductions_equal_hand_computed_values():
  true = np.array([0, 0, 1, 1, 2, 2])
  pred = np.array([0, 1, 1, 1, 0, 3])  # class 3 is predicted but absent from the ground truth
  conf = dense_probe.confusion(true, pred, 4)
  assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]
  # IoU: class 0 = 1 / (2 + 2 - 1), class 1 = 2 / (2 + 3 - 2), class 2 = 0; class 3 not averaged
  assert dense_probe.miou(conf) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
  assert dense_probe.reduce(conf, np.array([0, 0, 1, 1])).tolist() == [[4, 0], [1, 1]]
  # joint classes: red circle (0), red square (1), green circle (4), background (32)
  true = np.array([0, 0, 1, 4, 32, 32])
  pred = np.array([0, 1, 1, 0, 32, 4])
  got = dense_probe.scores(dense_probe.confusion(true, pred))
  assert got["accuracy"] == pytest.approx(3 / 6)
  # IoU: red circle 1 / (2 + 2 - 1), red square 1 / (1 + 2 - 1), green circle 0, background 1 / (2 + 1 - 1)
  assert got["miou"] == pytest.approx((1 / 3 + 1 / 2 + 0 + 1 / 2) / 4)
  # colours true [r r r g b b], predicted [r r r r b g]: red 3 / 4, green 0, background 1 / 2
  assert got["color_miou"] == pytest.approx((3 / 4 + 0 + 1 / 2) / 3)
  # shapes true [c c s c b b], predicted [c s s c b c]: circle 2 / 4, square 1 / 2, background 1 / 2
  assert got["shape_miou"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)
  assert all(0 <= v <= 1 for v in got.values())


def test_patch_labels_take_the_object_covering_a_quarter_and_follow_the_resize():
  pix = np.full((1, 4, 4), dense_probe.BACKGROUND, np.int8)
  pix[0, :2, :2] = [[5, 5], [5, 7]]      # the object covering most: 5
  pix[0, :2, 2:] = [[7, 9], [9, 7]]      # a tie: the lower class
  pix[0, 2:, 2:] = [[3, 32], [32, 32]]   # a quarter of the patch: the object
  assert dense_probe.patch_labels(pix, 2).tolist() == [[5, 7, 32, 3]]
  pix[0] = dense_probe.BACKGROUND
  pix[0, 0, :3] = 9                       # 3 of 16 pixels: less than a quarter, background
  assert dense_probe.patch_labels(pix, 1).tolist() == [[32]]
  ex = synthetic.multi_example(4, seed=1, image_size=32)
  want = dense_probe.pixel_labels(ex, 32, "resize", "t")
  assert set(np.unique(want)) >= {32} and len(np.unique(want)) >= 3
  big = {"key": "k", "image": ex["image"].repeat(2, 0).repeat(2, 1),
         "segmentation": ex["segmentation"].repeat(2, 0).repeat(2, 1)}
  assert np.array_equal(dense_probe.pixel_labels(big, 32, "resize", "t"), want)  # nearest at pixel centres
  wide = {"key": "w", "image": np.zeros((32, 48, 3), np.uint8), "segmentation": np.full((32, 48), -1, np.int16)}
  wide["segmentation"][:, 8:40] = ex["segmentation"]
  assert np.array_equal(dense_probe.pixel_labels(wide, 32, "center_crop", "t"), want)
  with pytest.raises(errors.DataError, match="segmentation of shape"):
    dense_probe.pixel_labels({**big, "segmentation": ex["segmentation"]}, 32, "resize", "evals.d.data.source")


def test_a_class_token_first_is_dropped_and_a_non_square_grid_refused():
  tokens = np.arange(2 * 65 * 3, dtype=np.float32).reshape(2, 65, 3)
  assert np.array_equal(dense_probe.drop_class_token(tokens), tokens[:, 1:])
  assert np.array_equal(dense_probe.drop_class_token(tokens[:, 1:]), tokens[:, 1:])
  with pytest.raises(errors.ConfigError, match="square patch grid .* got 63 tokens"):
    dense_probe.drop_class_token(tokens[:, 2:])


def test_the_records_keep_their_segmentation():
  rec = sources.open_source("synthetic:shapes_multi:validation", image_size=32)[5]
  assert np.array_equal(rec["segmentation"], synthetic.multi_example(5, seed=1, image_size=32)["segmentation"])


def test_oracle_features_solve_the_task_and_noise_does_not():
  rng = np.random.default_rng(0)
  def labels(seed, n):
    return dense_probe.patch_labels(np.stack([dense_probe.pixel_labels(
        synthetic.multi_example(i, seed=seed, image_size=64), 64, "resize", "t") for i in range(n)]), 8).ravel()
  train_y, test_y = labels(0, 256), labels(1, 16)  # 256: every class is in some patch
  mix = rng.normal(size=(dense_probe.NUM_CLASSES, 48))  # one-hot of the true label, mixed, plus noise
  def oracle(y):
    return np.eye(dense_probe.NUM_CLASSES)[y] @ mix + rng.normal(scale=0.3, size=(len(y), 48))
  head = dense_probe.LinearHead(oracle(train_y), train_y, 1.0)
  got = dense_probe.scores(dense_probe.confusion(test_y, head.predict(oracle(test_y))))
  assert got["miou"] > 0.95 and got["accuracy"] > 0.98 and got["color_miou"] > 0.95 and got["shape_miou"] > 0.95
  head = dense_probe.LinearHead(rng.normal(size=(len(train_y), 48)), train_y, 1.0)
  noise = dense_probe.scores(dense_probe.confusion(test_y, head.predict(rng.normal(size=(len(test_y), 48)))))
  assert noise["miou"] < 0.2


# --- the evaluator ------------------------------------------------------------------------------------

def _cfg(**options):
  cfg = config.load(SPEC, SMALL)
  options = {"num_examples": 16, "batch_size": 16, "train_examples": 32, **options}
  cfg.evals.dp = defaults.dense_probe("synthetic:shapes_multi:validation", **options)
  return cfg


def test_dense_probe_on_a_fresh_micro_siglip2_gives_metrics_in_range():
  cfg = _cfg()
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  params = random_params(s)
  suite = prepare_all(cfg, s.mesh)
  assert suite.prepared["dp"].train_pix.shape == (32, 64, 64)
  metrics = suite.run(s.graphdef, params, step=1, final=True)
  got = {k[len("eval/dp/"):]: v for k, v in metrics.items() if not k.endswith("/seconds")}
  assert set(got) == {"miou", "accuracy", "color_miou", "shape_miou"}
  assert all(0 <= v <= 1 for v in got.values()), got
  assert got["accuracy"] > 0.5  # background alone is most patches
  assert suite.prepared["dp"].evaluate(s.graphdef, params) == got  # deterministic


@pytest.mark.parametrize("field, value, message", [
    ("train_examples", 0, "evals.bad.train_examples must be an int >= 1"),
    ("l2", 0.0, "evals.bad.l2=0.0 must be a finite number > 0"),
    ("l2", -1.0, "evals.bad.l2=-1.0 must be"),
    ("l2", float("nan"), "evals.bad.l2=nan must be"),
    ("train_source", "", "evals.bad.train_source is empty"),
])
def test_config_checks_are_one_line(field, value, message):
  ev = defaults.dense_probe("synthetic:shapes_multi:validation")
  registry.validate("ok", ev)
  assert registry.new_evaluator("cli", "dense_probe:synthetic:shapes_multi:validation") == ev  # no other field needed
  ev[field] = value
  with pytest.raises(errors.ConfigError) as e:
    registry.validate("bad", ev)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("options, message", [
    (dict(source="synthetic:shapes:validation"),
     "evals.dp.data.source='synthetic:shapes:validation': its records carry no 'segmentation'"),
    (dict(train_source="synthetic:shapes:train"),
     "evals.dp.train_source='synthetic:shapes:train': its records carry no 'segmentation'"),
    (dict(train_examples=10**6), "evals.dp.train_examples=1000000 exceeds the 100000 examples"),
])
def test_sources_without_segmentation_fail_before_training(options, message):
  source = options.pop("source", None)
  cfg = _cfg(**options)
  if source:
    cfg.evals.dp.data.source = source
  with pytest.raises(errors.UserError) as e:
    prepare_all(cfg)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert "segmentation" not in message or "e.g. synthetic:shapes_multi" in str(e.value)
