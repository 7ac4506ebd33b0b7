"""Vision and text encoders, by `model.vision.kind` and `model.text.kind`, and the one factory the
model families (CoCa, two-tower, captioner) build their towers with.

A vision encoder is an `nnx.Module` constructed as

    Encoder(cfg, image_size, *, attention, remat, scan, act, norm_eps, dtype, param_dtype, rngs)

with `cfg` its `model.vision` group, which has at least `kind` and `width` (the width of the
tokens it returns; poolers and decoders are sized by it), and called as

    tokens_BxNxD, pooled_BxD = encoder(image_BxHxWx3)     # pooled: None when it has no pooling

A text encoder is constructed as `Encoder(cfg, *, attention, remat, scan, act, norm_eps, dtype,
param_dtype, rngs)` with `cfg` its `model.text` group (at least `kind`, `width`, `vocab_size`,
`context_length`) and called as `tokens_BxLxD, pooled_BxD = encoder(text_BxL)` (token id 0 is
padding). CoCa, which decodes captions with its text tower, also uses `token_embed` (an
`nnx.Embed`), `init_cache(batch, max_len)` and `decode(text_BxT, cache, pos)`.

Model code names logical axes only (see `layers.py`). To add an encoder: its module, and one
line in the table below (or `VISION.register("mine", Mine)` from your own code).
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from vlmjax.models.text import TextTransformer
from vlmjax.models.vision import ViT
from vlmjax.registry import Registry

VISION = Registry("model.vision.kind", {"vit": ViT})
TEXT = Registry("model.text.kind", {"transformer": TextTransformer})


def build_vision(cfg: ml_collections.ConfigDict, image_size: int, **kw) -> nnx.Module:
  """The vision encoder of `cfg` (`model.vision`)."""
  return VISION.lookup(cfg.kind, "model.vision.kind")(cfg, image_size, **kw)


def build_text(cfg: ml_collections.ConfigDict, **kw) -> nnx.Module:
  """The text encoder of `cfg` (`model.text`)."""
  return TEXT.lookup(cfg.kind, "model.text.kind")(cfg, **kw)
