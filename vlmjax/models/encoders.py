"""Vision and text encoders, by `model.vision.kind` and `model.text.kind`, and the one factory the
model families (CoCa, two-tower, captioner) build their towers with.

A vision encoder is an `nnx.Module` constructed as

    Encoder(cfg, image_size, *, attention, remat, scan, act, norm_eps, dtype, param_dtype, rngs)

with `cfg` its `model.vision` group, which has at least `kind` and `width` (the width of the
tokens it returns; poolers and decoders are sized by it), and called as

    tokens_BxNxD, pooled_BxD = encoder(image_BxHxWx3)     # pooled: None when it has no pooling

An encoder with randomness in training (ViT's patch dropout) says so with a class attribute
`takes_rng = True`; `encode_vision` then calls it as `encoder(image, train=True, rng=key)` in
training (N may then be smaller: the kept tokens). The families call their tower through
`encode_vision`, so an encoder without `takes_rng` only ever gets the image. The "image" is whatever
the encoder reads: `[B, H, W, 3]` for the ViT; for `naflex` a dict {"patches" [B, N, P], "shapes"
[B, 2], "mask" [B, N]} of patchified, padded images (see `naflex.py`), passed through untouched.
Decoders and poolers read the tokens through `encode_vision_context`: a `layers.Masked` (tokens and
the mask of the ones to attend to) for an encoder with `token_context` (NaFlex), the array otherwise.

A text encoder is constructed as `Encoder(cfg, *, attention, remat, scan, act, norm_eps, dtype,
param_dtype, rngs)` with `cfg` its `model.text` group (at least `kind`, `width`, `vocab_size`,
`context_length`) and called as `tokens_BxLxD, pooled_BxD = encoder(text_BxL)` (token id 0 is
padding). CoCa, which decodes captions with its text tower, also uses `token_embed` (an
`nnx.Embed`), `init_cache(batch, max_len)` and `decode(text_BxT, cache, pos)`.

Model code names logical axes only (see `layers.py`). To add an encoder: its module, and one
line in the table below (or `VISION.register("mine", Mine)` from your own code).
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from vlmjax.models.naflex import NaFlex
from vlmjax.models.text import TextTransformer
from vlmjax.models.vision import ViT
from vlmjax.registry import Registry

VISION = Registry("model.vision.kind", {"vit": ViT, "naflex": NaFlex})
TEXT = Registry("model.text.kind", {"transformer": TextTransformer})


def build_vision(cfg: ml_collections.ConfigDict, image_size: int, **kw) -> nnx.Module:
  """The vision encoder of `cfg` (`model.vision`)."""
  return VISION.lookup(cfg.kind, "model.vision.kind")(cfg, image_size, **kw)


def build_text(cfg: ml_collections.ConfigDict, **kw) -> nnx.Module:
  """The text encoder of `cfg` (`model.text`)."""
  return TEXT.lookup(cfg.kind, "model.text.kind")(cfg, **kw)


# The vision tower's key is folded out of the train step's key with this, so the other draws made
# from the step's key (CapPa's parallel-prediction choice) stay what they were without it.
VISION_STREAM = 1


def encode_vision(encoder: nnx.Module, image_BxHxWx3: jax.Array | dict, *, train: bool = False,
                  rng: jax.Array | None = None) -> tuple:
  """(tokens_BxNxD, pooled_BxD or None) of a vision encoder. In training an encoder with `takes_rng`
  gets its own key from the step's `rng` (reproducible from (seed, step)); otherwise just the image."""
  if not (train and getattr(encoder, "takes_rng", False)):
    return encoder(image_BxHxWx3)
  key = None if rng is None else jax.random.fold_in(rng, VISION_STREAM)
  return encoder(image_BxHxWx3, train=True, rng=key)


def encode_vision_context(encoder: nnx.Module, image, *, train: bool = False, rng: jax.Array | None = None) -> tuple:
  """(context, pooled_BxD or None): `encode_vision`'s tokens as a decoder or pooler reads them. An encoder
  whose tokens need a mask (NaFlex: padding, packed rows) has `token_context(image, tokens)`, which gives
  a `layers.Masked` of each image's tokens [B, N, D] and mask [B, N]; other encoders' tokens as they are."""
  tokens, pooled = encode_vision(encoder, image, train=train, rng=rng)
  if hasattr(encoder, "token_context"):
    return encoder.token_context(image, tokens), pooled
  return tokens, pooled
