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

from vlmjax.models import encoders, layers
from vlmjax.models.fusion import AttentionPooler, MultimodalDecoder
from vlmjax.models.output import Output, l2_normalize

POOLER_MODES = ("parallel", "cascade", "single")


class CoCa(nnx.Module):
  """CoCa. `model.pooler.mode`: `parallel` and `cascade` (paper) use a 1-query contrastive
  pooler beside or after the n-query captioning pooler; `single` (open_clip's CoCa) has one
  n-query pooler whose first output is the contrastive embedding and the rest the decoder's
  context. `model.pooler.kind` picks the pooler layout (see `AttentionPooler`); with
  `open_clip` the pooled outputs are normed afterwards, as open_clip's `ln_post` does.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    pc = cfg.pooler
    if pc.mode not in POOLER_MODES:
      raise ValueError(f"model.pooler.mode must be one of {'|'.join(POOLER_MODES)}, got {pc.mode!r}")
    if pc.mode == "single" and pc.n_queries < 2:
      raise ValueError(f"model.pooler.mode='single' needs n_queries >= 2, got {pc.n_queries}")
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, scan=cfg.scan, act=cfg.act, norm_eps=cfg.norm_eps,
              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    dense_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    v, t = cfg.vision, cfg.text
    self.pooler_mode = pc.mode
    self.vision = encoders.build_vision(v, cfg.image_size, **kw)
    self.text = encoders.build_text(t, **kw)
    pool_kw = dict(kind=pc.kind, **kw)
    self.caption_pool = AttentionPooler(pc.width, v.width, pc.heads, pc.n_queries, **pool_kw)
    self.contrastive_pool = (None if pc.mode == "single" else AttentionPooler(
        pc.width, pc.width if pc.mode == "cascade" else v.width, pc.heads, 1, **pool_kw))
    self.pool_norm = (layers.layer_norm(pc.width, eps=cfg.norm_eps, **dense_kw) if pc.kind == "open_clip"
                      else None)
    self.image_proj = layers.dense(pc.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                   std=pc.width**-0.5, **dense_kw)
    self.text_proj = layers.dense(t.width, cfg.embed_dim, ("embed", None), use_bias=False,
                                  std=t.width**-0.5, **dense_kw)
    d = cfg.decoder
    self.decoder = MultimodalDecoder(t.width, d.heads, d.mlp_dim, d.depth, pc.width, t.vocab_size,
                                     layout=d.layout, tie_embedding=d.tie_embedding, **kw)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(cfg.init_logit_scale), jnp.float32), axes=())

  def _pool(self, pooler: AttentionPooler, x: jax.Array | layers.Masked) -> jax.Array:
    tokens, keep_BxN = layers.split_context(x)
    x = pooler(tokens, mask_BxN=keep_BxN)
    return x if self.pool_norm is None else self.pool_norm(x)

  def _image(self, image_BxHxWx3: jax.Array, *, train: bool = False,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (image_emb_BxE, caption context_BxQxC); in training the poolers read only the
    tokens the vision tower kept (patch dropout)."""
    tokens_BxNxC, _ = encoders.encode_vision_context(self.vision, image_BxHxWx3, train=train, rng=rng)
    caption_BxQxC = self._pool(self.caption_pool, tokens_BxNxC)  # NaFlex: a layers.Masked
    if self.pooler_mode == "single":
      pooled_BxC, caption_BxQxC = caption_BxQxC[:, 0], caption_BxQxC[:, 1:]
    else:
      source = caption_BxQxC if self.pooler_mode == "cascade" else tokens_BxNxC
      pooled_BxC = self._pool(self.contrastive_pool, source)[:, 0]
    return l2_normalize(self.image_proj(pooled_BxC)), caption_BxQxC

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

  def decode_init(self, ctx_BxQxC: jax.Array, max_len: int) -> dict:
    """KV caches of the text tower and the decoder for `max_len` positions."""
    return {"text": self.text.init_cache(ctx_BxQxC.shape[0], max_len),
            "decoder": self.decoder.init_cache(ctx_BxQxC, max_len)}

  def decode_step(self, cache: dict, token_B: jax.Array, pos: jax.Array) -> tuple[jax.Array, dict]:
    """Logits [B, V] predicting position pos+1 from the token at `pos`; equal to `caption_logits`
    at `pos` for the same prefix."""
    x_Bx1xD, text_cache = self.text.decode(token_B[:, None], cache["text"], pos)
    logits_Bx1xV, dec_cache = self.decoder.decode(x_Bx1xD, cache["decoder"], pos, embed=self.text.token_embed)
    return logits_Bx1xV[:, 0], {"text": text_cache, "decoder": dec_cache}

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> Output:
    image_emb, caption_BxQxC = self._image(image_BxHxWx3, train=train, rng=rng)  # rng: patch dropout
    tokens_BxLxD, pooled_BxD = self.text(text_BxL)
    features_BxLxD = self.decoder.features(tokens_BxLxD, caption_BxQxC)
    return Output(
        image_emb=image_emb,
        text_emb=l2_normalize(self.text_proj(pooled_BxD)),
        logit_scale=jnp.exp(self.logit_scale[...]),
        caption_logits=self.decoder.project(features_BxLxD, self.text.token_embed),
        caption_features=features_BxLxD,
        caption_kernel=self.decoder.head_kernel(self.text.token_embed),
    )
