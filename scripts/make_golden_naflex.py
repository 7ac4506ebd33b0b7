"""Golden fixture for the NaFlex encoder (`model.vision.kind=naflex`): transformers' Siglip2Model on images
of several aspect ratios, each on its own patch grid, padded.

    /work/torchenv/bin/python scripts/make_golden_naflex.py   # any venv with torch and transformers;
                                                               # run scripts/make_golden_siglip2.py first

Reuses the toy Siglip2Model of scripts/make_golden_siglip2.py (tests/fixtures/convert/hf_siglip2: patch 8,
width 64, 2 layers, 4 heads, a native 4x4 position table), so no new weights are stored, and writes
tests/fixtures/convert/hf_siglip2_naflex.npz:

  `pixel_values` [B, 16, 192], `spatial_shapes` [B, 2], `pixel_attention_mask` [B, 16]: what transformers'
      Siglip2ImageProcessor (max_num_patches 16, no rescale or normalisation) makes of random images of
      SIZES (height x width): grids 4x4, 2x8, 5x3 (one padded token), 1x8 (half padded), 3x5, 4x4 (a
      resize down); up- and down-sampling of the position table along each axis;
  `text` [B, 12] (Gemma's ids, some padded), and the reference `image_emb`, `text_emb` (L2-normalised),
      `logit_scale` (exp), `logit_bias`, `hidden` [B, 16, 64] (the vision tower's last_hidden_state,
      post-norm; zero at padding, whose values carry no meaning);
  `resize_shapes` [K, 2] and `resize_tables` [K, 36, 64]: the 4x4 table resized by torch's
      F.interpolate(mode="bilinear", align_corners=False, antialias=True) to each (h, w) (flattened
      row-major, zero past h*w); the maker checks transformers' own resize gives the same to 1e-6.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from make_golden import OUT
from make_golden_siglip2 import EOS, GRID, L, PAD, PATCH, V

SIZES = [(32, 32), (16, 64), (48, 24), (8, 64), (24, 40), (40, 40)]
RESIZE_SHAPES = [(4, 4), (2, 8), (5, 3), (1, 8), (3, 5), (1, 1), (6, 6), (8, 2), (2, 3), (4, 7), (16, 1)]
MAX_PATCHES = GRID * GRID


def torch_resize(table: torch.Tensor, h: int, w: int, n: int) -> torch.Tensor:
  """[n, D]: the G x G x D table resized to (h, w) by F.interpolate, flattened, zero past h*w. Two calls,
  rows then columns (the kernel is separable: the same values as one call, checked where w > 1), as torch
  2.15's CPU antialiased bilinear returns wrong values for an output width of 1 when the height changes."""
  kw = dict(mode="bilinear", align_corners=False, antialias=True)
  grid_1xDxGxG = table.permute(2, 0, 1)[None]
  resized = F.interpolate(F.interpolate(grid_1xDxGxG, size=(h, table.shape[1]), **kw), size=(h, w), **kw)
  if w > 1:
    once = F.interpolate(grid_1xDxGxG, size=(h, w), **kw)
    assert float((once - resized).abs().max()) < 1e-6, f"F.interpolate to {h}x{w} is not separable"
  out = torch.zeros(n, table.shape[-1])
  out[:h * w] = resized[0].permute(1, 2, 0).reshape(h * w, -1)
  return out


def resize_tables(model) -> tuple[np.ndarray, np.ndarray]:
  """RESIZE_SHAPES and the toy's table resized to each by F.interpolate, checked against transformers'."""
  emb = model.vision_model.embeddings
  table = emb.position_embedding.weight.detach().reshape(GRID, GRID, -1)
  n = max(h * w for h, w in RESIZE_SHAPES)
  ours = torch.stack([torch_resize(table, h, w, n) for h, w in RESIZE_SHAPES])
  hf = emb.resize_positional_embeddings(table, torch.tensor(RESIZE_SHAPES), n).detach()
  for k, (h, w) in enumerate(RESIZE_SHAPES):
    drift = float((hf[k, :h * w] - ours[k, :h * w]).abs().max())
    assert drift < 1e-6, f"transformers' resize to {h}x{w} differs from F.interpolate by {drift}"
  return np.array(RESIZE_SHAPES, np.int32), ours.numpy()


def check_toy(model) -> None:
  """The reloaded toy still gives scripts/make_golden_siglip2.py's embeddings at the native grid."""
  square = np.load(os.path.join(OUT, "hf_siglip2.npz"))
  fed = {k: torch.from_numpy(square[k]) for k in ("pixel_values", "spatial_shapes", "pixel_attention_mask")}
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(square["text"]).long(), **fed)
  assert np.abs(out.image_embeds.numpy() - square["image_emb"]).max() < 1e-6, "hf_siglip2 did not reload"


def main() -> None:
  import transformers
  from transformers import Siglip2ImageProcessor, Siglip2Model
  transformers.logging.set_verbosity_error()  # the toy config keeps unused CLIP bos/eos ids
  model = Siglip2Model.from_pretrained(os.path.join(OUT, "hf_siglip2")).eval()
  check_toy(model)
  g = torch.Generator().manual_seed(21)
  images = [torch.randn(3, h, w, generator=g).numpy() for h, w in SIZES]  # channels first, normalised
  B = len(images)
  text = torch.randint(5, V, (B, L), generator=g)
  text[:, -1] = EOS
  text[1::2, 5], text[1::2, 6:] = EOS, PAD
  processor = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=MAX_PATCHES, do_resize=True,
                                    do_rescale=False, do_normalize=False)
  fed = processor(images=images, return_tensors="pt")
  shapes, mask = fed["spatial_shapes"], fed["pixel_attention_mask"].bool()
  assert len({tuple(s) for s in shapes.tolist()}) > 3 and not mask.all(), "want several grids and padding"
  with torch.no_grad():
    out = model(input_ids=text, **fed)
  hidden = out.vision_model_output.last_hidden_state * mask[..., None]
  resize_shapes, tables = resize_tables(model)
  arrays = dict(text=text.numpy().astype(np.int32), image_emb=out.image_embeds, text_emb=out.text_embeds,
                logit_scale=model.logit_scale.exp(), logit_bias=model.logit_bias, hidden=hidden,
                resize_shapes=resize_shapes, resize_tables=tables, **dict(fed))
  path = os.path.join(OUT, "hf_siglip2_naflex.npz")
  np.savez_compressed(path, **{k: v.detach().numpy() if torch.is_tensor(v) else v for k, v in arrays.items()})
  print(f"grids {shapes.tolist()}; valid tokens {mask.sum(1).tolist()}; wrote {os.path.normpath(path)} "
        f"({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
  torch.manual_seed(0)
  main()
