"""NaFlex images under the families with a decoder or poolers over image tokens (SigLIP 2's LocCa decoder,
CoCa, the captioner): padding is no key of the cross-attention or the poolers, packed rows give each image
its unpacked result, and KV-cached decoding equals recomputing every position."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx

from vlmjax import config, models
from vlmjax.evals import decode
from vlmjax.models import layers

FAMILIES = {"siglip2": "configs/siglip2_tiny.py:distill=0", "coca": "configs/coca_tiny.py",
            "captioner": "configs/cappa_tiny.py"}
GRIDS = [(4, 8), (5, 5), (3, 7), (2, 3)]  # 32, 25, 21 and 6 of a 32-token budget
N, P = 32, 192


def naflex_model(family: str):
  cfg = config.load(os.path.join(ROOT, FAMILIES[family]))
  cfg.model.vision = ml_collections.ConfigDict(dict(
      kind="naflex", patch_size=8, width=128, depth=2, heads=4, mlp_dim=256,
      pool="map" if family == "siglip2" else "none", num_patches=16, max_num_patches=N))
  return models.build(cfg.model, nnx.Rngs(0)), cfg


def images(padding_value: float = 0.0) -> dict:
  rng = np.random.default_rng(1)
  patches = np.full((len(GRIDS), N, P), padding_value, np.float32)
  mask = np.zeros((len(GRIDS), N), bool)
  for b, (h, w) in enumerate(GRIDS):
    patches[b, :h * w] = rng.normal(size=(h * w, P))
    mask[b, :h * w] = True
  return {"patches": patches, "shapes": np.array(GRIDS, np.int32), "mask": mask}


def packed(image: dict, rows: list[list[int]], length: int) -> dict:
  """The images of `rows` (row-major order) in shared rows of `length` tokens."""
  out = {"patches": np.zeros((len(rows), length, P), np.float32), "positions": np.zeros((len(rows), length, 2), np.int32),
         "segments": np.zeros((len(rows), length), np.int32), "shapes": image["shapes"][sum(rows, [])]}
  for r, members in enumerate(rows):
    offset = 0
    for s, b in enumerate(members, 1):
      h, w = GRIDS[b]
      out["patches"][r, offset:offset + h * w] = image["patches"][b, :h * w]
      out["positions"][r, offset:offset + h * w] = np.stack(np.divmod(np.arange(h * w), w), 1)
      out["segments"][r, offset:offset + h * w] = s
      offset += h * w
  out["mask"] = out["segments"] > 0
  return out


def text() -> np.ndarray:
  t = np.zeros((len(GRIDS), 12), np.int32)
  t[:, 0] = 1
  t[:, 1:9] = np.random.default_rng(2).integers(3, 200, size=(len(GRIDS), 8))
  t[:, 9] = 2
  return t


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
  model, cfg = naflex_model(request.param)
  graphdef, params = nnx.split(model)
  forward = jax.jit(lambda p, image, text: nnx.merge(graphdef, p)(image, text))
  return request.param, graphdef, params, forward


def test_padding_is_no_key_and_packed_rows_give_the_unpacked_result(family):
  """Garbage in the padding patches changes nothing; packed 2 + 2 into rows of 48 tokens, each image's
  caption logits (and contrastive embedding) equal its unpacked ones to 1e-5."""
  name, graphdef, params, forward = family
  clean = forward(params, images(0.0), text())
  noisy = forward(params, images(7.0), text())
  np.testing.assert_allclose(noisy.caption_logits, clean.caption_logits, atol=1e-5, rtol=0)
  order = [0, 3, 1, 2]
  rows = forward(params, packed(images(), [[0, 3], [1, 2]], 48), text()[order])
  np.testing.assert_allclose(rows.caption_logits, np.asarray(clean.caption_logits)[order], atol=1e-5, rtol=0)
  if name != "captioner":
    np.testing.assert_allclose(rows.image_emb, np.asarray(clean.image_emb)[order], atol=1e-5, rtol=0)
  model = nnx.merge(graphdef, params)
  ctx = model.caption_context(images())
  if name != "coca":  # CoCa's decoder reads its pooled queries; the others every valid image token
    assert isinstance(ctx, layers.Masked) and ctx.mask.sum(1).tolist() == [h * w for h, w in GRIDS]


def test_cached_decoding_equals_recomputing_on_naflex_images(family):
  """Greedy captions of packed NaFlex images: the KV cache (cross-attention keys masked) equals the
  uncached decoder; beam search runs over the masked context."""
  name, graphdef, params, _ = family
  model = nnx.merge(graphdef, params)
  image = packed(images(), [[0, 3], [1, 2]], 48)
  run = lambda stepper: decode.generate(model, image, max_len=8, method="greedy", stepper=stepper)
  np.testing.assert_array_equal(run(decode.Cached()), run(decode.Recompute()))
  beams = decode.generate(model, image, max_len=6, method="beam", beam_size=2)
  assert beams.shape == (len(GRIDS), 6) and jnp.issubdtype(beams.dtype, jnp.integer)
