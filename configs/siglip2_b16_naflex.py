"""SigLIP 2 B/16 NaFlex (google/siglip2-base-patch16-naflex): the released two towers with the NaFlex image
encoder, which reads each image at its own aspect ratio on a patch grid of at most 256 patches.

    vlmjax convert --from hf --checkpoint ./siglip2-base-patch16-naflex --config configs/siglip2_b16_naflex.py \
        --tokenizer gemma:./siglip2-base-patch16-naflex/tokenizer.model --out w/siglip2_b16_naflex

The towers are configs/siglip2_b16.py's at `locca=0` (big_vision's SigLIP B/16 with the Gemma vocabulary
of 256,000 ids, text over 64 tokens, tanh GELU, LayerNorm eps 1e-6), except the image tower:
`model.vision.kind=naflex` (`vlmjax/models/naflex.py`): a Linear patch embedding over 16x16x3 patches, a
learned 16x16 position table (`num_patches` 256) resized per image to its (h, w) grid (bilinear,
antialiased, as transformers' Siglip2VisionEmbeddings), padding masked out of attention and the MAP head.
375,234,050 parameters, as transformers' Siglip2Model of that checkpoint.

The model takes images as {"patches" [B, 256, 768], "shapes" [B, 2], "mask" [B, 256]} (transformers'
Siglip2ImageProcessor's pixel_values, spatial_shapes and pixel_attention_mask at max_num_patches 256).
`model.image_size` (256) is the native grid's square size (the same weights through configs/siglip2_b16.py's
ViT see 256 px squares). `vlmjax train` makes NaFlex batches with `data.train.max_patches` > 0 (set here to
the budget, 256: `vlmjax/data/naflex.py`); zero-shot, retrieval and few-shot evaluators read their images
the same way, within the run's budget.
Config argument: batch, steps.
"""

import ml_collections

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000)
  c = presets.siglip_experiment("B/16", image_size=256, vocab_size=256_000, pad_id=0, batch=a.batch,
                                steps=a.steps)  # Gemma's <pad> is 0
  v = c.model.vision
  c.model.vision = ml_collections.ConfigDict(dict(
      kind="naflex", patch_size=v.patch_size, width=v.width, depth=v.depth, heads=v.heads, mlp_dim=v.mlp_dim,
      pool="map", num_patches=256, max_num_patches=256))
  c.data.train.max_patches = 256
  return c
