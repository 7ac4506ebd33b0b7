"""Fusion: attentional poolers over image tokens and the multimodal (captioning) decoder.

Shape legend: B batch, N image tokens, C image width, Q pooler queries,
L text length, D decoder width, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers


class AttentionPooler(nnx.Module):
  """Q learned queries cross-attend to image tokens (CoCa / SigLIP MAP head)."""

  def __init__(self, dim: int, ctx_dim: int, heads: int, n_queries: int, *, attention: str,
               remat: str = "none", dtype, param_dtype, rngs: nnx.Rngs):
    del remat  # one attention layer: nothing worth recomputing
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.queries = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (n_queries, dim), param_dtype),
                             axes=(None, "embed"))
    self.ln_ctx = layers.layer_norm(ctx_dim, **kw)
    self.attn = layers.Attention(dim, heads, kv_dim=ctx_dim, impl=attention, **kw)
    self.ln_out = layers.layer_norm(dim, **kw)

  def __call__(self, ctx_BxNxC: jax.Array) -> jax.Array:
    B = ctx_BxNxC.shape[0]
    q_BxQxD = jnp.broadcast_to(self.queries[...].astype(ctx_BxNxC.dtype), (B, *self.queries.shape))
    return self.ln_out(self.attn(q_BxQxD, self.ln_ctx(ctx_BxNxC)))


class MultimodalDecoder(nnx.Module):
  """Causal self-attention over text tokens, cross-attention to image tokens, vocabulary head."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, depth: int, ctx_dim: int, vocab_size: int,
               *, tie_embedding: bool = False, attention: str, remat: str, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.blocks = nnx.List([layers.Block(dim, heads, mlp_dim, cross_dim=ctx_dim, impl=attention, **kw)
                            for _ in range(depth)])
    self.remat = remat
    self.ln = layers.layer_norm(dim, **kw)
    self.head = (None if tie_embedding
                 else layers.dense(dim, vocab_size, ("embed", "vocab"), use_bias=False, **kw))

  def __call__(self, tokens_BxLxD: jax.Array, image_BxQxC: jax.Array,
               embed: nnx.Embed | None = None) -> jax.Array:
    """Returns caption logits [B, L, V]: position t predicts token t+1.

    With a tied embedding the vocabulary head is `embed`'s table, transposed.
    """
    x = layers.run_blocks(self.blocks, tokens_BxLxD, remat=self.remat, causal=True, ctx=image_BxQxC)
    x = self.ln(x)
    return embed.attend(x) if self.head is None else self.head(x)
