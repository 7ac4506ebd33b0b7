"""CoCa: contrastive captioner (Yu et al., 2022).

ViT image tokens -> attentional poolers (1 query: contrastive image embedding;
n queries: what the decoder attends to, pooled in `parallel` from the image
tokens or in `cascade` from the captioning queries' output). A causal text
transformer with a trailing CLS token gives the text embedding and the token
features that the multimodal decoder turns into caption logits.

Shape legend: B batch, H/W image size, L text length, N image tokens,
Q pooler queries, E embedding dim, V vocabulary.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import layers
from vlmjax.models.fusion import AttentionPooler, MultimodalDecoder
from vlmjax.models.output import Output, l2_normalize
from vlmjax.models.text import TextTransformer
from vlmjax.models.vision import ViT

POOLER_MODES = ("parallel", "cascade")


class CoCa(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if cfg.pooler.mode not in POOLER_MODES:
      raise ValueError(f"model.pooler.mode must be one of {'|'.join(POOLER_MODES)}, got {cfg.pooler.mode!r}")
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dense_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    v, t = cfg.vision, cfg.text
    self.pooler_mode = cfg.pooler.mode
    self.vision = ViT(v, cfg.image_size, **kw)
    self.text = TextTransformer(t, **kw)
    self.caption_pool = AttentionPooler(v.width, v.width, cfg.pooler.heads, cfg.pooler.n_queries, **kw)
    self.contrastive_pool = AttentionPooler(v.width, v.width, cfg.pooler.heads, 1, **kw)
    self.image_proj = layers.dense(v.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                   std=v.width**-0.5, **dense_kw)
    self.text_proj = layers.dense(t.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                  std=t.width**-0.5, **dense_kw)
    self.decoder = MultimodalDecoder(t.width, cfg.decoder.heads, cfg.decoder.mlp_dim, cfg.decoder.depth,
                                     v.width, t.vocab_size, tie_embedding=cfg.decoder.tie_embedding, **kw)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32), axes=())

  def _image(self, image_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array]:
    tokens_BxNxC, _ = self.vision(image_BxHxWx3)
    caption_BxQxC = self.caption_pool(tokens_BxNxC)
    source = caption_BxQxC if self.pooler_mode == "cascade" else tokens_BxNxC
    image_emb = l2_normalize(self.image_proj(self.contrastive_pool(source)[:, 0]))
    return image_emb, caption_BxQxC

  def encode_image(self, image_BxHxWx3: jax.Array) -> jax.Array:
    return self._image(image_BxHxWx3)[0]

  def encode_text(self, text_BxL: jax.Array) -> jax.Array:
    return l2_normalize(self.text_proj(self.text(text_BxL)[1]))

  def caption_context(self, image_BxHxWx3: jax.Array) -> jax.Array:
    """What the caption decoder attends to: [B, Q, C]."""
    return self._image(image_BxHxWx3)[1]

  def caption_logits(self, ctx_BxQxC: jax.Array, text_BxL: jax.Array) -> jax.Array:
    """Caption logits [B, L, V] for a text prefix; position t predicts token t+1 (causal)."""
    return self.decoder(self.text(text_BxL)[0], ctx_BxQxC, embed=self.text.token_embed)

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False) -> Output:
    del train  # no dropout in CoCa pretraining
    image_emb, caption_BxQxC = self._image(image_BxHxWx3)
    tokens_BxLxD, pooled_BxD = self.text(text_BxL)
    return Output(
        image_emb=image_emb,
        text_emb=l2_normalize(self.text_proj(pooled_BxD)),
        logit_scale=jnp.exp(self.logit_scale[...]),
        caption_logits=self.decoder(tokens_BxLxD, caption_BxQxC, embed=self.text.token_embed),
    )
