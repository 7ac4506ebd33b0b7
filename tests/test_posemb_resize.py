"""`init_from` another run at another size (CLIPA: pre-train small, fine-tune at full size): learned
position embeddings are resized (`vlmjax.models.posemb`), everything else must match.

Image grids: bilinear with the corners aligned (big_vision's `resample_posemb`, scipy.ndimage.zoom
order 1); text: the first rows when shorter, linear with half-pixel centres when longer (open_clip's
`resize_text_pos_embed`). The references below are written out loop by loop."""

import os

import jax
import numpy as np
import pytest

from conftest import MICRO, ROOT
from vlmjax import config, errors, sharding, train, train_state
from vlmjax.models import posemb

TINY = tuple(kv for kv in MICRO if not kv[0].startswith(("model.decoder", "model.pooler"))) + (
    ("optim.warmup_steps", "0"), ("total_steps", "2"), ("ckpt_every", "1"), ("log_every", "1"))


def tiny(*overrides):
  return config.load(os.path.join(ROOT, "configs/siglip_tiny.py"), TINY + tuple(overrides))


def ref_grid(grid_GxGxD, n):
  """Bilinear, corners aligned: output (i, j) samples the stored grid at (i, j) * (G - 1) / (n - 1)."""
  g = grid_GxGxD.shape[0]
  out = np.zeros((n, n, grid_GxGxD.shape[2]))
  at = lambda i: i * (g - 1) / (n - 1) if n > 1 else 0.0
  for i in range(n):
    for j in range(n):
      y, x = at(i), at(j)
      y0, x0 = min(int(y), max(g - 2, 0)), min(int(x), max(g - 2, 0))
      y1, x1 = min(y0 + 1, g - 1), min(x0 + 1, g - 1)
      dy, dx = y - y0, x - x0
      out[i, j] = ((1 - dy) * (1 - dx) * grid_GxGxD[y0, x0] + (1 - dy) * dx * grid_GxGxD[y0, x1]
                   + dy * (1 - dx) * grid_GxGxD[y1, x0] + dy * dx * grid_GxGxD[y1, x1])
  return out


def ref_text(rows_LxD, n):
  """The first n rows when shorter; when longer, linear at (i + 0.5) * L / n - 0.5, clamped to [0, L - 1]."""
  length = rows_LxD.shape[0]
  if n <= length:
    return rows_LxD[:n]
  out = []
  for i in range(n):
    x = min(max((i + 0.5) * length / n - 0.5, 0.0), length - 1)
    lo = min(int(x), max(length - 2, 0))
    hi = min(lo + 1, length - 1)
    out.append((1 - (x - lo)) * rows_LxD[lo] + (x - lo) * rows_LxD[hi])
  return np.stack(out)


def test_grid_resize_is_bilinear_with_corners_aligned():
  a, b, c, d = (np.full(3, v) for v in (1.0, 2.0, 4.0, 8.0))
  got = posemb.resize_grid(np.stack([a, b, c, d]), 3, cls=False).reshape(3, 3, 3)
  expected = [[a, (a + b) / 2, b], [(a + c) / 2, (a + b + c + d) / 4, (b + d) / 2], [c, (c + d) / 2, d]]
  np.testing.assert_allclose(got, np.array(expected), rtol=1e-12)
  rng = np.random.default_rng(0)
  for old, new in [(4, 8), (7, 14), (5, 3), (2, 7), (3, 1), (1, 4)]:
    x = rng.normal(size=(old * old, 5))
    np.testing.assert_allclose(posemb.resize_grid(x, new, cls=False),
                               ref_grid(x.reshape(old, old, 5), new).reshape(-1, 5), rtol=1e-10, atol=1e-12)
  x = rng.normal(size=(1 + 16, 5)).astype(np.float32)  # the class-token row first: kept as it is
  out = posemb.resize_grid(x, 6, cls=True)
  assert out.shape == (37, 5) and out.dtype == np.float32
  np.testing.assert_array_equal(out[0], x[0])
  np.testing.assert_allclose(out[1:], ref_grid(x[1:].reshape(4, 4, 5), 6).reshape(-1, 5), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(posemb.resize_grid(x, 4, cls=True), x)  # the same size: the identity
  const = np.full((16, 5), 0.3)
  np.testing.assert_allclose(posemb.resize_grid(const, 9, cls=False), np.full((81, 5), 0.3), rtol=1e-12)
  yy, xx = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")  # a linear ramp stays exactly linear
  ramp = (1 + 2 * yy + 3 * xx).reshape(16, 1)
  t = np.arange(10) * 3 / 9
  np.testing.assert_allclose(posemb.resize_grid(ramp, 10, cls=False).reshape(10, 10),
                             1 + 2 * t[:, None] + 3 * t[None, :], rtol=1e-12)


def test_grid_resize_equals_big_vision_scipy_zoom():
  ndimage = pytest.importorskip("scipy.ndimage")
  x = np.random.default_rng(1).normal(size=(49, 4))
  for new in (14, 3):
    zoomed = ndimage.zoom(x.reshape(7, 7, 4), (new / 7, new / 7, 1), order=1)
    np.testing.assert_allclose(posemb.resize_grid(x, new, cls=False), zoomed.reshape(-1, 4), atol=1e-12)


def test_text_resize_truncates_or_interpolates_linearly():
  a, b = np.full(2, 1.0), np.full(2, 5.0)
  np.testing.assert_allclose(posemb.resize_text(np.stack([a, b]), 4, cls=False),
                             np.stack([a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(8, 3))
  for new in (3, 8, 13, 32):
    np.testing.assert_allclose(posemb.resize_text(x, new, cls=False), ref_text(x, new), rtol=1e-12)
  np.testing.assert_array_equal(posemb.resize_text(x, 5, cls=False), x[:5])
  with_cls = posemb.resize_text(x, 12, cls=True)  # the last row is the class token's: kept, last
  assert with_cls.shape == (13, 3)
  np.testing.assert_array_equal(with_cls[-1], x[-1])
  np.testing.assert_allclose(with_cls[:-1], ref_text(x[:-1], 12), rtol=1e-12)
  np.testing.assert_allclose(posemb.resize_text(np.ones((4, 3)), 9, cls=False), np.ones((9, 3)))


def test_what_cannot_be_resized_is_one_line_naming_both_shapes():
  cfg = tiny()
  cases = [({"vision.posemb": (15, 32)}, "not a square grid"),
           ({"vision.posemb": (16, 64)}, "another width"),
           ({"vision.posemb": (17, 32), "vision.cls": (1, 32)}, "stored with a class-token row, wanted without")]
  for stored, what in cases:
    with pytest.raises(errors.ConfigError, match=what) as e:
      posemb.plan(cfg.model, {"vision.posemb": (64, 32)}, stored, "init checkpoint 'X'")
    assert "vision.posemb is " + str(stored["vision.posemb"]) in str(e.value) and "(64, 32)" in str(e.value)
    assert "\n" not in str(e.value)
  plan = posemb.plan(cfg.model, {"vision.posemb": (64, 32), "text.posemb": (8, 32)},
                     {"vision.posemb": (16, 32), "text.posemb": (8, 32)}, "X")
  assert [r.describe() for r in plan] == ["resized vision.posemb 4x4 -> 8x8 (bilinear)"]


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
  """A tiny SigLIP trained 2 steps at 32 px (4x4 grid of 8-px patches), 16-token text; steps 1 and 2 kept."""
  workdir = str(tmp_path_factory.mktemp("clipa") / "small")
  assert train.train(small_cfg(), workdir)["finished"]
  return workdir


def small_cfg():
  return tiny(("model.image_size", "32"), ("model.text.context_length", "16"))


def stored_params(workdir, step):
  _, params, _ = train_state.restore_params(workdir, small_cfg(), step)
  return jax.device_get(params)


def test_a_run_at_a_larger_image_and_longer_text_starts_from_the_small_run(run1, tmp_path, capsys):
  capsys.readouterr()
  cfg = tiny(("model.image_size", "64"), ("model.text.context_length", "24"), ("init_from", run1),
             ("optim.freeze", "vision.posemb,text.posemb"))  # frozen: after training they are as initialised
  summary = train.train(cfg, str(tmp_path / "large"))
  out = capsys.readouterr().out
  assert "resized vision.posemb 4x4 -> 8x8 (bilinear)" in out and "resized text.posemb 16 -> 24 (linear)" in out
  assert f"initialised from {run1} step 2" in out
  assert summary["finished"] and np.isfinite(summary["final_loss"]) and np.isfinite(summary["first_loss"])
  small = stored_params(run1, 2)
  s, large, _ = train_state.restore_params(str(tmp_path / "large"), cfg, None)
  vision = np.asarray(large["vision"]["posemb"])
  np.testing.assert_allclose(vision, ref_grid(small["vision"]["posemb"].reshape(4, 4, -1), 8).reshape(64, -1),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(large["text"]["posemb"]), ref_text(small["text"]["posemb"], 24),
                             rtol=1e-6, atol=1e-7)
  from flax import nnx
  model = nnx.merge(s.graphdef, large)
  rng = np.random.default_rng(0)
  image = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
  text = rng.integers(1, 259, size=(2, 24)).astype(np.int32)
  assert np.isfinite(np.asarray(model.encode_image(image))).all()
  assert np.isfinite(np.asarray(model.encode_text(text))).all()


def test_a_shorter_text_from_a_chosen_step_keeps_the_first_rows(run1, capsys):
  cfg = tiny(("model.image_size", "32"), ("model.text.context_length", "8"), ("init_from", f"{run1}:1"))
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  capsys.readouterr()
  params = jax.device_get(train_state.init_state(cfg, s).params)
  out = capsys.readouterr().out
  assert "resized text.posemb 16 -> 8 (truncated)" in out and "vision.posemb" not in out
  small = stored_params(run1, 1)
  np.testing.assert_array_equal(params["text"]["posemb"], small["text"]["posemb"][:8])
  np.testing.assert_array_equal(params["vision"]["posemb"], small["vision"]["posemb"])
  np.testing.assert_array_equal(params["vision"]["embed"]["kernel"], small["vision"]["embed"]["kernel"])
  assert not np.array_equal(small["vision"]["posemb"], stored_params(run1, 2)["vision"]["posemb"])  # step 1 it was


def test_converted_weights_are_resized_too(run1, tmp_path, capsys):
  from vlmjax import convert
  small = stored_params(run1, 2)
  convert.save_params(str(tmp_path / "weights"), small, {})
  cfg = tiny(("model.image_size", "48"), ("model.text.context_length", "16"), ("init_from", str(tmp_path / "weights")))
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  capsys.readouterr()
  params = jax.device_get(train_state.init_state(cfg, s).params)
  assert "resized vision.posemb 4x4 -> 6x6 (bilinear)" in capsys.readouterr().out
  np.testing.assert_allclose(params["vision"]["posemb"],
                             ref_grid(small["vision"]["posemb"].reshape(4, 4, -1), 6).reshape(36, -1), rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_array_equal(params["text"]["posemb"], small["text"]["posemb"])


def test_bad_init_from_is_one_line_before_anything_is_read(run1, tmp_path):
  (tmp_path / "empty").mkdir()
  cases = [(f"{run1}:7", (), "no checkpoint at step 7 in .*; available: 1, 2"),
           (str(tmp_path / "empty"), (), "is neither a `vlmjax convert --out` directory"),
           (f"{tmp_path / 'empty'}:3", (), "is not a training run's workdir"),
           (str(tmp_path / "nope"), (), "does not exist"),
           (run1, (("model.vision.posemb", "sincos2d"),), r"has a learned vision.posemb \(16, 32\); this config"),
           (run1, (("model.vision.cls_token", "True"),),
            r"vision.posemb is \(16, 32\), the config wants \(17, 32\): stored without a class-token row"),
           (run1, (("model.text.width", "64"), ("model.text.mlp_dim", "128")),
            r"text.posemb is \(16, 32\), the config wants \(16, 64\): another width"),
           (run1, (("model.vision.patch_size", "4"),),
            r"vision.embed.kernel is \(192, 32\), the config wants \(48, 32\)")]
  for init_from, overrides, message in cases:
    cfg = tiny(("model.image_size", "32"), ("model.text.context_length", "16"), ("init_from", init_from),
               *overrides)
    s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
    with pytest.raises(errors.ConfigError, match=message) as e:
      train_state.check_init(cfg, s)
    assert "\n" not in str(e.value), str(e.value)
