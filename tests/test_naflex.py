"""The NaFlex image encoder (`model.vision.kind=naflex`) against transformers' Siglip2Model on images of
several aspect ratios, each on its own padded patch grid (scripts/make_golden_naflex.py); no torch.

The toy weights are tests/fixtures/convert/hf_siglip2 (scripts/make_golden_siglip2.py), converted once
into the NaFlex encoder and once into the ViT (its native square grid).
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

import vlmjax.convert as convert
from vlmjax import config, models
from vlmjax.config import ConfigError
from vlmjax.convert import io, params
from vlmjax.models import encoders, naflex

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "convert")
CHECKPOINT = os.path.join(FIX, "hf_siglip2")
NAFLEX = dict(kind="naflex", patch_size=8, width=64, depth=2, heads=4, mlp_dim=256, pool="map", num_patches=16,
              max_num_patches=16)


def load_cfg(naflex_cfg: bool = True, **vision):
  cfg = config.load(f"{os.path.join(FIX, 'tiny_configs.py')}:name=hf_siglip2")
  if naflex_cfg:
    cfg.model.vision = ml_collections.ConfigDict(dict(NAFLEX, **vision))
  return cfg


def converted(cfg):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, convert.convert("hf", CHECKPOINT, cfg.model, nnx.to_pure_dict(state))


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(FIX, "hf_siglip2_naflex.npz")))


@pytest.fixture(scope="module")
def model():
  """(graphdef, params) of the toy in a two-tower model with the NaFlex encoder."""
  return converted(load_cfg())


def inputs(ref: dict) -> dict:
  return dict(patches=ref["pixel_values"], shapes=ref["spatial_shapes"].astype(np.int32),
              mask=ref["pixel_attention_mask"].astype(bool))


# The NaFlex tower of a (graphdef, params) model, jitted once per graphdef and input shape.
_VISION = jax.jit(lambda p, image, graphdef: nnx.merge(graphdef, p).vision(image), static_argnums=2)


def vision(model, image) -> tuple:
  """(tokens_BxNxD, pooled_BxD) of the model's NaFlex tower."""
  graphdef, p = model
  return _VISION(p, image, graphdef)


def test_embeddings_equal_reference_for_every_image(golden, model):
  """Grids 4x4, 2x8, 5x3, 1x8, 3x5 and a resized 4x4 in one batch, some padded: image and text
  embeddings to 1e-5 per image, the vision tower's valid tokens (post-norm) to 1e-5."""
  graphdef, p = model
  image = inputs(golden)
  assert len({tuple(s) for s in image["shapes"].tolist()}) > 3 and not image["mask"].all()
  out = jax.jit(lambda p, image, text: nnx.merge(graphdef, p)(image, text))(p, image, golden["text"])
  for key in ("image_emb", "text_emb"):
    diff_B = np.abs(np.asarray(getattr(out, key)) - golden[key]).max(axis=1)
    assert (diff_B < 1e-5).all(), (key, diff_B)
  for key in ("logit_scale", "logit_bias"):
    assert abs(float(getattr(out, key)) - float(golden[key].reshape(()))) < 1e-6, key
  tokens_BxNxD = np.asarray(vision(model, image)[0])
  for b, mask_N in enumerate(image["mask"]):
    diff = np.abs(tokens_BxNxD[b][mask_N] - golden["hidden"][b][mask_N]).max()
    assert diff < 1e-5, (b, tuple(image["shapes"][b]), diff)


def test_position_embedding_resize_equals_torch(golden):
  """The 4x4 table resized to each (h, w) (up, down, mixed, 1x1, 16x1) equals torch's F.interpolate
  (bilinear, align_corners=False, antialias=True), and jax.image.resize with antialias on static shapes."""
  table_GxGxD = io.read(CHECKPOINT)[convert.SIGLIP2_POSEMB].reshape(4, 4, -1)
  shapes_Kx2, want_KxNxD = golden["resize_shapes"], golden["resize_tables"]
  got_KxNxD = np.asarray(naflex.resize_posemb(table_GxGxD, shapes_Kx2, want_KxNxD.shape[1]))
  for (h, w), got_NxD, want_NxD in zip(shapes_Kx2.tolist(), got_KxNxD, want_KxNxD):
    assert np.abs(got_NxD[:h * w] - want_NxD[:h * w]).max() < 1e-6, (h, w)
    static = jax.image.resize(table_GxGxD, (h, w, table_GxGxD.shape[-1]), "bilinear", antialias=True)
    assert np.abs(got_NxD[:h * w] - np.asarray(static).reshape(h * w, -1)).max() < 1e-6, (h, w)
    np.testing.assert_array_equal(got_NxD[h * w:], np.broadcast_to(got_NxD[0], got_NxD[h * w:].shape))


def test_padding_tokens_do_not_change_valid_outputs(golden, model):
  image = inputs(golden)
  tokens, pooled = vision(model, image)
  noisy = dict(image, patches=np.where(image["mask"][..., None], image["patches"],
                                       np.random.default_rng(0).normal(0, 1e3, image["patches"].shape)))
  tokens2, pooled2 = vision(model, noisy)
  np.testing.assert_array_equal(np.asarray(pooled2), np.asarray(pooled))
  for b, mask_N in enumerate(image["mask"]):
    np.testing.assert_array_equal(np.asarray(tokens2)[b][mask_N], np.asarray(tokens)[b][mask_N])


def test_native_square_grid_equals_the_vit():
  """hf_siglip2.npz's 32 px images at the native 4x4 grid: the NaFlex encoder and the ViT of the square
  conversion (the same weights under the same parameter names) give the same tokens and pooled vector."""
  ref = np.load(os.path.join(FIX, "hf_siglip2.npz"))
  nf_graph, nf = converted(load_cfg())
  vit_graph, vit = converted(load_cfg(naflex_cfg=False))
  assert jax.tree.structure(nf) == jax.tree.structure(vit)
  B = ref["image"].shape[0]
  image = dict(patches=ref["pixel_values"], shapes=np.full((B, 2), 4, np.int32), mask=np.ones((B, 16), bool))
  ours = vision((nf_graph, nf), image)
  theirs = jax.jit(lambda p, x: encoders.encode_vision(nnx.merge(vit_graph, p).vision, x))(vit, ref["image"])
  for a, b in zip(ours, theirs):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() < 1e-5


def test_round_trip_with_scanned_blocks():
  cfg = load_cfg()
  cfg.model.scan = True
  state = io.read(CHECKPOINT)
  ours = params.to_ours(state, "hf_siglip2", cfg.model, nnx.to_pure_dict(nnx.split(models.abstract(cfg.model))[1]))
  back = params.to_ref(ours, "hf_siglip2", cfg.model)
  assert set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def _bad(ref: dict, what: str) -> dict:
  image = inputs(ref)
  mask, shapes = image["mask"].copy(), image["shapes"].copy()
  if what == "empty":
    mask[3] = False
  elif what == "outside":
    mask[2, 15] = True  # the 5x3 grid has 15 tokens
  elif what == "too_big":
    shapes[1] = (4, 5)
  elif what == "zero":
    shapes[0] = (0, 4)
  return dict(image, mask=mask, shapes=shapes)


def pack_rows(image: dict, rows: list[list[int]], length: int) -> dict:
  """The unpacked images put into packed rows of `length` tokens: `rows[r]` lists the images of row r, whose
  order must be row-major (rows [[0, 1], [2]], not [[1, 0], ...]), each image's valid tokens one after another."""
  R, P = len(rows), image["patches"].shape[2]
  out = dict(patches=np.zeros((R, length, P), np.float32), positions=np.zeros((R, length, 2), np.int32),
             segments=np.zeros((R, length), np.int32), shapes=image["shapes"][sum(rows, [])])
  for r, members in enumerate(rows):
    offset = 0
    for s, b in enumerate(members, 1):
      h, w = image["shapes"][b]
      i_T = np.arange(h * w)
      out["patches"][r, offset:offset + h * w] = image["patches"][b, :h * w]
      out["positions"][r, offset:offset + h * w] = np.stack([i_T // w, i_T % w], 1)
      out["segments"][r, offset:offset + h * w] = s
      offset += h * w
  out["mask"] = out["segments"] > 0
  return out


def test_packed_rows_give_each_image_its_unpacked_result(golden, model):
  """Six images of several grids, packed 3 + 2 + 1 into rows of 40 tokens (padding between rows' ends, an
  image resized 4x4 among them): every image's pooled embedding and valid tokens equal its unpacked ones."""
  image = inputs(golden)
  assert [int(h * w) for h, w in image["shapes"]] == [16, 16, 15, 8, 15, 16]
  packed = pack_rows(image, [[0, 2, 3], [4, 1], [5]], 40)
  assert not np.asarray(packed["mask"]).all()
  tokens_BxNxD, pooled_BxD = (np.asarray(x) for x in vision(model, image))
  tokens_RxLxD, packed_BxD = (np.asarray(x) for x in vision(model, packed))
  order = [0, 2, 3, 4, 1, 5]  # the images in the packed rows' row-major order
  np.testing.assert_allclose(packed_BxD, pooled_BxD[order], atol=1e-5, rtol=0)
  h, w = image["shapes"][1]
  np.testing.assert_allclose(tokens_RxLxD[1, 15:15 + h * w], tokens_BxNxD[1, :h * w], atol=1e-5, rtol=0)


def test_malformed_packed_inputs_are_one_line(golden, model):
  graphdef, p = model
  image = inputs(golden)
  packed = pack_rows(image, [[0, 2, 3], [4, 1], [5]], 40)
  far = packed["positions"].copy()
  far[0, 0] = (4, 0)  # image 0 is 4x4: rows 0..3
  for bad, match in ((dict(packed, shapes=image["shapes"][:5]), r"6 segments for 5 images"),
                     (dict(packed, positions=far), r"row 0, token 0 sits at \(4, 0\), outside its image's \(4, 4\) grid"),
                     ({k: v for k, v in packed.items() if k != "positions"}, r"need image\['segments'\] \[3, 40\]"),
                     (dict(packed, mask=~packed["mask"]), r"mask that is not segments > 0")):
    with pytest.raises(ValueError, match=match) as e:
      nnx.merge(graphdef, p).vision(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("what, match", [
    ("empty", r"image 3 has no valid token in image\['mask'\]"),
    ("outside", r"image 2's mask marks tokens past its \(5, 3\) grid"),
    ("too_big", r"image 1 has grid \(h, w\) = \(4, 5\).*h\*w <= 16"),
    ("zero", r"image 0 has grid \(h, w\) = \(0, 4\): h and w must be >= 1"),
])
def test_bad_inputs_are_one_line(golden, model, what, match):
  graphdef, p = model
  with pytest.raises(ValueError, match=match) as e:
    nnx.merge(graphdef, p).vision(_bad(golden, what))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("image, match", [
    (np.zeros((2, 32, 32, 3), np.float32), r"takes image=\{'patches'.*got an array of shape \(2, 32, 32, 3\)"),
    (dict(patches=np.zeros((2, 16, 100)), shapes=np.ones((2, 2), np.int32), mask=np.ones((2, 16), bool)),
     r"image\['patches'\] must be \[R, N, 192\]"),
    (dict(patches=np.zeros((2, 16, 192)), shapes=np.ones((2, 2)), mask=np.ones((2, 16), bool)),
     r"image\['shapes'\] must hold integers"),
    (dict(patches=np.zeros((2, 16, 192)), shapes=np.ones((2, 2), np.int32), mask=np.ones((2, 8), bool)),
     r"image\['mask'\] \[2, 16\]"),
])
def test_malformed_inputs_are_one_line(model, image, match):
  graphdef, p = model
  with pytest.raises(ValueError, match=match) as e:
    nnx.merge(graphdef, p).vision(image)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("vision, match", [
    (dict(num_patches=12), r"num_patches must be a square number.*got 12"),
    (dict(pool="gap"), r"pool must be one of map\|none for kind=naflex"),
    (dict(max_num_patches=0), r"max_num_patches must be an int >= 1"),
])
def test_bad_configs_are_one_line(vision, match):
  with pytest.raises(ValueError, match=match) as e:
    models.abstract(load_cfg(**vision).model)
  assert "\n" not in str(e.value)


def test_conversion_into_another_table_is_one_line():
  cfg = load_cfg(num_patches=25)
  with pytest.raises(ConfigError, match=r"4x4 position table of 8-px patches.*num_patches=25.*set 16 and 8") as e:
    converted(cfg)
  assert "\n" not in str(e.value)
