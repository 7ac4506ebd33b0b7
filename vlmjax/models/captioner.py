"""CapPa: an image captioner as a vision pretrainer (Tschannen et al., 2023).

ViT image tokens -> a transformer decoder (causal self-attention, cross-attention
to the image tokens) that predicts the caption. With probability
`decoder.masked_pred_prob` per example, the decoder instead gets only mask
tokens and no causal mask ("parallel prediction"), so it must read every caption
token off the image; otherwise it is trained autoregressively as usual.

Shape legend: B batch, H/W image size, L text length, N image tokens,
C image width, D decoder width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import encoders, layers
from vlmjax.models.fusion import MultimodalDecoder
from vlmjax.models.output import Output, l2_normalize


class Captioner(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    if not 0.0 <= cfg.decoder.masked_pred_prob <= 1.0:
      raise ValueError(f"model.decoder.masked_pred_prob must be in [0, 1], got {cfg.decoder.masked_pred_prob}")
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(attention=cfg.attention, remat=cfg.remat, scan=cfg.scan, act=cfg.act, norm_eps=cfg.norm_eps,
              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    v, t, dec = cfg.vision, cfg.text, cfg.decoder
    self.masked_pred_prob = dec.masked_pred_prob
    self.vision = encoders.build_vision(v, cfg.image_size, **kw)
    self.token_embed = nnx.Embed(t.vocab_size, dec.width, dtype=dtype, param_dtype=param_dtype,
                                 embedding_init=nnx.initializers.normal(0.02),
                                 embedding_metadata={"axes": ("vocab", "embed")}, rngs=rngs)
    self.posemb = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (t.context_length, dec.width),
                                                          param_dtype), axes=(None, "embed"))
    self.mask_token = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (dec.width,), param_dtype),
                                axes=("embed",))
    self.decoder = MultimodalDecoder(dec.width, dec.heads, dec.mlp_dim, dec.depth, v.width, t.vocab_size,
                                     tie_embedding=dec.tie_embedding, **kw)

  def caption_context(self, image_BxHxWx3: jax.Array, *, train: bool = False,
                      rng: jax.Array | None = None) -> jax.Array | layers.Masked:
    """What the decoder attends to: the image tokens [B, N, C] (in training, with patch dropout,
    only the kept ones; NaFlex: a `layers.Masked`, padding no key)."""
    return encoders.encode_vision_context(self.vision, image_BxHxWx3, train=train, rng=rng)[0]

  def encode_image(self, image_BxHxWx3: jax.Array) -> jax.Array:
    """Mean-pooled image tokens (NaFlex: the valid ones), L2-normalised (for probes; a captioner has no
    text embedding)."""
    tokens_BxNxC, keep_BxN = layers.split_context(self.caption_context(image_BxHxWx3))
    if keep_BxN is None:
      return l2_normalize(tokens_BxNxC.mean(axis=1))
    w_BxNx1 = keep_BxN[..., None].astype(tokens_BxNxC.dtype)
    return l2_normalize((tokens_BxNxC * w_BxNx1).sum(1) / w_BxNx1.sum(1))

  def _embed(self, text_BxL: jax.Array) -> jax.Array:
    x_BxLxD = self.token_embed(text_BxL)
    return x_BxLxD + self.posemb[:text_BxL.shape[1]].astype(x_BxLxD.dtype)

  def caption_logits(self, ctx_BxNxC: jax.Array, text_BxL: jax.Array) -> jax.Array:
    """Autoregressive caption logits [B, L, V]; position t predicts token t+1 (causal)."""
    return self.decoder(self._embed(text_BxL), ctx_BxNxC, embed=self._tied())

  def decode_init(self, ctx_BxNxC: jax.Array, max_len: int) -> dict:
    return {"decoder": self.decoder.init_cache(ctx_BxNxC, max_len)}

  def decode_step(self, cache: dict, token_B: jax.Array, pos: jax.Array) -> tuple[jax.Array, dict]:
    """Logits [B, V] predicting position pos+1 from the token at `pos` (autoregressive mode)."""
    x_Bx1xD = self.token_embed(token_B[:, None])
    x_Bx1xD = x_Bx1xD + jax.lax.dynamic_slice_in_dim(self.posemb[...], pos, 1).astype(x_Bx1xD.dtype)
    logits_Bx1xV, dec = self.decoder.decode(x_Bx1xD, cache["decoder"], pos, embed=self._tied())
    return logits_Bx1xV[:, 0], {"decoder": dec}

  def _tied(self) -> nnx.Embed | None:
    return self.token_embed if self.decoder.head is None else None

  def __call__(self, image_BxHxWx3: jax.Array, text_BxL: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None, decoder_text: jax.Array | None = None) -> Output:
    """`decoder_text` (LocCa's task sequences, `vlmjax.data.locca`) replaces the text the decoder reads."""
    ctx_BxNxC = self.caption_context(image_BxHxWx3, train=train, rng=rng)
    return self._decode(ctx_BxNxC, text_BxL if decoder_text is None else decoder_text, train=train, rng=rng)

  def _decode(self, ctx_BxNxC: jax.Array, text_BxL: jax.Array, *, train: bool, rng: jax.Array | None) -> Output:
    """The decoder's output on `text` (autoregressive, or in training parallel prediction per example)."""
    if not (train and self.masked_pred_prob > 0):
      return self._output(self.decoder.features(self._embed(text_BxL), ctx_BxNxC))
    if rng is None:
      raise ValueError("Captioner with masked_pred_prob > 0 needs `rng` when train=True")
    B, L = text_BxL.shape
    parallel_B = jax.random.bernoulli(rng, self.masked_pred_prob, (B,))
    x_BxLxD = self._embed(text_BxL)
    masked_BxLxD = jnp.broadcast_to(self.mask_token[...].astype(x_BxLxD.dtype), x_BxLxD.shape)
    masked_BxLxD = masked_BxLxD + self.posemb[:L].astype(x_BxLxD.dtype)
    x_BxLxD = jnp.where(parallel_B[:, None, None], masked_BxLxD, x_BxLxD)
    causal_LxL = jnp.tril(jnp.ones((L, L), bool))
    mask_BxLxL = parallel_B[:, None, None] | causal_LxL[None]
    return self._output(self.decoder.features(x_BxLxD, ctx_BxNxC, mask_BxLxL=mask_BxLxL))

  def _output(self, features_BxLxD: jax.Array) -> Output:
    return Output(caption_logits=self.decoder.project(features_BxLxD, self._tied()),
                  caption_features=features_BxLxD, caption_kernel=self.decoder.head_kernel(self._tied()))
