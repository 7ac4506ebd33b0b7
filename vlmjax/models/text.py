"""Text transformer: causal or bidirectional, pooled by trailing CLS, EOS position, first or last token.

`mask_pad` hides padding (id 0) from attention; SigLIP's text tower does not, and
pools the last position of its fixed-length, padded input (`pool="last"`).

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


class TextTransformer(nnx.Module):
  def __init__(self, cfg: ml_collections.ConfigDict, *, attention: str, remat: str, scan: bool, dtype, param_dtype,
               rngs: nnx.Rngs):
    if cfg.pool not in POOLS:
      raise ValueError(f"model.text.pool must be one of {'|'.join(POOLS)}, got {cfg.pool!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = cfg.width
    self.pool, self.causal, self.mask_pad = cfg.pool, cfg.causal, cfg.mask_pad
    self.token_embed = nnx.Embed(cfg.vocab_size, d, dtype=dtype, param_dtype=param_dtype,
                                 embedding_init=nnx.initializers.normal(0.02),
                                 embedding_metadata={"axes": ("vocab", "embed")}, rngs=rngs)
    positions = cfg.context_length + (1 if cfg.pool == "cls" else 0)
    self.posemb = nnx.Param(nnx.initializers.normal(0.01)(rngs.params(), (positions, d), param_dtype),
                            axes=(None, "embed"))
    self.cls = (nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d,), param_dtype), axes=("embed",))
                if cfg.pool == "cls" else None)
    self.blocks = layers.Stack(lambda r: layers.Block(d, cfg.heads, cfg.mlp_dim, impl=attention,
                                                      dtype=dtype, param_dtype=param_dtype, rngs=r),
                               cfg.depth, scan=scan, remat=remat, rngs=rngs)
    self.ln = layers.layer_norm(d, **kw)

  def __call__(self, text_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (tokens_BxLxD, pooled_BxD); both after the final layer norm."""
    B, L = text_BxL.shape
    x_BxTxD = self.token_embed(text_BxL)
    valid_BxT = text_BxL != 0
    if self.cls is not None:
      cls = jnp.broadcast_to(self.cls[...].astype(x_BxTxD.dtype), (B, 1, x_BxTxD.shape[-1]))
      x_BxTxD = jnp.concatenate([x_BxTxD, cls], axis=1)
      valid_BxT = jnp.concatenate([valid_BxT, jnp.ones((B, 1), bool)], axis=1)
    T = x_BxTxD.shape[1]
    x_BxTxD = x_BxTxD + self.posemb[:T].astype(x_BxTxD.dtype)
    x_BxTxD = self.blocks(x_BxTxD, mask=valid_BxT[:, None, :] if self.mask_pad else None,
                          causal=self.causal)
    x_BxTxD = self.ln(x_BxTxD)
    if self.pool == "cls":
      return x_BxTxD[:, :L], x_BxTxD[:, L]
    if self.pool == "first":
      return x_BxTxD, x_BxTxD[:, 0]
    if self.pool == "last":
      return x_BxTxD, x_BxTxD[:, -1]
    eos_B = jnp.maximum(jnp.sum(text_BxL != 0, axis=1) - 1, 0)  # last non-pad position
    return x_BxTxD, jnp.take_along_axis(x_BxTxD, eos_B[:, None, None], axis=1)[:, 0]

  def init_cache(self, batch: int, max_len: int):
    return self.blocks.init_cache(batch, max_len)

  def decode(self, text_BxT: jax.Array, cache, pos: jax.Array) -> tuple[jax.Array, object]:
    """Token features [B, T, D] (after the final norm) of T new tokens at positions pos..,
    attending causally to the cached ones: incremental decoding of a causal tower."""
    x_BxTxD = self.token_embed(text_BxT)
    posemb_TxD = jax.lax.dynamic_slice_in_dim(self.posemb[...], pos, text_BxT.shape[1], axis=0)
    x_BxTxD, cache = self.blocks.decode(x_BxTxD + posemb_TxD.astype(x_BxTxD.dtype), cache, pos)
    return self.ln(x_BxTxD), cache
