"""Text transformer: causal or bidirectional, pooled by trailing CLS, EOS position, first or last token.

`mask_pad` hides padding (id 0) from attention; SigLIP's text tower does not, and
pools the last position of its fixed-length, padded input (`pool="last"`).
`cls_mask` (with `pool="cls"`): `correct` lets every query see the valid tokens and the
trailing CLS; `legacy` shifts that key mask right by one (key j visible iff j == 0 or
token j-1 is not padding), as released open_clip CoCa weights were trained.
`pad_id`: the token the tower embeds at padding positions. Batches always pad with
0; SigLIP's tokenizers pad with a real token (</s>, id 1) that its tower attends to,
so `pad_id=1` reproduces released SigLIP weights on short captions.
`norm_tokens`: whether the token features returned (what a caption decoder reads) pass
through the final norm; the pooled vector always does. open_clip's CoCa: False.

Shape legend: B batch, L text length (context), T = L (+1 with a trailing CLS),
D width, V vocabulary. Token id 0 is padding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax.models import layers

POOLS = ("cls", "eos", "first", "last")
CLS_MASKS = ("correct", "legacy")


class TextTransformer(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, attention: str, remat: str, scan: bool, act: str,
               norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    if cfg.pool not in POOLS:
      raise ValueError(f"model.text.pool must be one of {'|'.join(POOLS)}, got {cfg.pool!r}")
    if cfg.cls_mask not in CLS_MASKS:
      raise ValueError(f"model.text.cls_mask must be one of {'|'.join(CLS_MASKS)}, got {cfg.cls_mask!r}")
    if not isinstance(cfg.norm_tokens, bool):
      raise ValueError(f"model.text.norm_tokens must be true|false, got {cfg.norm_tokens!r}")
    if isinstance(cfg.pad_id, bool) or not isinstance(cfg.pad_id, int) or not 0 <= cfg.pad_id < cfg.vocab_size:
      raise ValueError(f"model.text.pad_id must be an int in [0, {cfg.vocab_size}), got {cfg.pad_id!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = cfg.width
    self.pad_id = cfg.pad_id
    self.pool, self.causal, self.mask_pad = cfg.pool, cfg.causal, cfg.mask_pad
    self.norm_tokens, self.legacy_cls_mask = cfg.norm_tokens, cfg.cls_mask == "legacy"
    self.token_embed = nnx.Embed(cfg.vocab_size, d, dtype=dtype, param_dtype=param_dtype,
                                 embedding_init=nnx.initializers.normal(0.02),
                                 embedding_metadata={"axes": ("vocab", "embed")}, rngs=rngs)
    positions = cfg.context_length + (1 if cfg.pool == "cls" else 0)
    self.posemb = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (positions, d), param_dtype),
                            axes=(None, "embed"))
    self.cls = (nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d,), param_dtype), axes=("embed",))
                if cfg.pool == "cls" else None)
    self.blocks = layers.Stack(lambda r: layers.Block(d, cfg.heads, cfg.mlp_dim, impl=attention, act=act,
                                                      norm_eps=norm_eps, dtype=dtype, param_dtype=param_dtype,
                                                      rngs=r),
                               cfg.depth, scan=scan, remat=remat, rngs=rngs)
    self.ln = layers.layer_norm(d, eps=norm_eps, **kw)

  def __call__(self, text_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (tokens_BxLxD, pooled_BxD): pooled after the final norm, tokens too if `norm_tokens`."""
    B, L = text_BxL.shape
    valid_BxT = text_BxL != 0
    x_BxTxD = self.token_embed(jnp.where(valid_BxT, text_BxL, self.pad_id) if self.pad_id else text_BxL)
    if self.cls is not None:
      cls = jnp.broadcast_to(self.cls[...].astype(x_BxTxD.dtype), (B, 1, x_BxTxD.shape[-1]))
      x_BxTxD = jnp.concatenate([x_BxTxD, cls], axis=1)
      ones_Bx1 = jnp.ones((B, 1), bool)
      parts = [ones_Bx1, valid_BxT] if self.legacy_cls_mask else [valid_BxT, ones_Bx1]
      valid_BxT = jnp.concatenate(parts, axis=1)
    T = x_BxTxD.shape[1]
    x_BxTxD = x_BxTxD + self.posemb[:T].astype(x_BxTxD.dtype)
    x_BxTxD = self.blocks(x_BxTxD, mask=valid_BxT[:, None, :] if self.mask_pad else None,
                          causal=self.causal)
    if self.pool == "cls":
      tokens_BxLxD, pooled_BxD = x_BxTxD[:, :L], x_BxTxD[:, L]
    elif self.pool == "first":
      tokens_BxLxD, pooled_BxD = x_BxTxD, x_BxTxD[:, 0]
    elif self.pool == "last":
      tokens_BxLxD, pooled_BxD = x_BxTxD, x_BxTxD[:, -1]
    else:
      eos_B = jnp.maximum(jnp.sum(text_BxL != 0, axis=1) - 1, 0)  # last non-pad position
      tokens_BxLxD, pooled_BxD = x_BxTxD, jnp.take_along_axis(x_BxTxD, eos_B[:, None, None], axis=1)[:, 0]
    # the norm acts per token: norming the pooled token equals pooling the normed tokens
    return (self.ln(tokens_BxLxD) if self.norm_tokens else tokens_BxLxD), self.ln(pooled_BxD)

  def init_cache(self, batch: int, max_len: int):
    return self.blocks.init_cache(batch, max_len)

  def decode(self, text_BxT: jax.Array, cache, pos: jax.Array) -> tuple[jax.Array, object]:
    """Token features [B, T, D] (normed as `norm_tokens` says) of T new tokens at positions pos..,
    attending causally to the cached ones: incremental decoding of a causal tower."""
    x_BxTxD = self.token_embed(text_BxT)
    posemb_TxD = jax.lax.dynamic_slice_in_dim(self.posemb[...], pos, text_BxT.shape[1], axis=0)
    x_BxTxD, cache = self.blocks.decode(x_BxTxD + posemb_TxD.astype(x_BxTxD.dtype), cache, pos)
    return (self.ln(x_BxTxD) if self.norm_tokens else x_BxTxD), cache
