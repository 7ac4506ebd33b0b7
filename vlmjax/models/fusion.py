"""Fusion: attentional poolers over image tokens and the multimodal (captioning) decoder.

Shape legend: B batch, N image tokens, C image width, Q pooler queries,
L text length, D decoder width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vlmjax.models import layers


POOLER_KINDS = ("coca", "open_clip", "map")


class AttentionPooler(nnx.Module):
  """Q learned queries cross-attend to image tokens. Three published layouts (`kind`):

  - `coca`: norm the tokens, attend, norm the output (CoCa paper).
  - `open_clip`: norm the queries and the tokens, attend (open_clip's AttentionalPooler;
    its CoCa norms the output outside, in the model).
  - `map`: attend, then add an MLP of the normed output (big_vision / SigLIP MAP head).
  """

  def __init__(self, dim: int, ctx_dim: int, heads: int, n_queries: int, *, kind: str = "coca",
               mlp_dim: int | None = None, attention: str, remat: str = "none", scan: bool = False,
               act: str, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    del remat, scan  # one attention layer: nothing to recompute or scan
    if kind not in POOLER_KINDS:
      raise ValueError(f"attention pooler kind must be one of {'|'.join(POOLER_KINDS)}, got {kind!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kind = kind
    self.queries = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (n_queries, dim), param_dtype),
                             axes=(None, "embed"))
    self.ln_q = layers.layer_norm(dim, eps=norm_eps, **kw) if kind == "open_clip" else None
    self.ln_ctx = layers.layer_norm(ctx_dim, eps=norm_eps, **kw) if kind in ("coca", "open_clip") else None
    self.attn = layers.Attention(dim, heads, kv_dim=ctx_dim, impl=attention, **kw)
    self.ln_out = layers.layer_norm(dim, eps=norm_eps, **kw) if kind in ("coca", "map") else None
    self.mlp = layers.Mlp(dim, mlp_dim, act=act, **kw) if kind == "map" else None

  def __call__(self, ctx_BxNxC: jax.Array, *, mask_BxN: jax.Array | None = None) -> jax.Array:
    """Returns [B, Q, D]. `mask_BxN`: the tokens the queries may attend to (padding false: NaFlex)."""
    B = ctx_BxNxC.shape[0]
    q_BxQxD = jnp.broadcast_to(self.queries[...].astype(ctx_BxNxC.dtype), (B, *self.queries.shape))
    if self.ln_q is not None:
      q_BxQxD = self.ln_q(q_BxQxD)
    if self.ln_ctx is not None:
      ctx_BxNxC = self.ln_ctx(ctx_BxNxC)
    mask_BxQxN = None if mask_BxN is None else jnp.broadcast_to(
        mask_BxN[:, None, :], (B, q_BxQxD.shape[1], mask_BxN.shape[1]))
    x_BxQxD = self.attn(q_BxQxD, ctx_BxNxC, mask_BxTxS=mask_BxQxN)
    if self.kind == "map":
      return x_BxQxD + self.mlp(self.ln_out(x_BxQxD))
    return x_BxQxD if self.ln_out is None else self.ln_out(x_BxQxD)


class CrossBlock(nnx.Module):
  """open_clip's cross-attention block: x + attn(ln(x), ln_kv(ctx)), then x + mlp(ln(x))."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, ctx_dim: int, *, impl: str, act: str, norm_eps: float,
               dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln1 = layers.layer_norm(dim, eps=norm_eps, **kw)
    self.ln_kv = layers.layer_norm(ctx_dim, eps=norm_eps, **kw)
    self.attn = layers.Attention(dim, heads, kv_dim=ctx_dim, impl=impl, **kw)
    self.ln2 = layers.layer_norm(dim, eps=norm_eps, **kw)
    self.mlp = layers.Mlp(dim, mlp_dim, act=act, **kw)

  def __call__(self, x_BxLxD: jax.Array, ctx_BxQxC: jax.Array) -> jax.Array:
    x_BxLxD = x_BxLxD + self.attn(self.ln1(x_BxLxD), self.ln_kv(ctx_BxQxC))
    return x_BxLxD + self.mlp(self.ln2(x_BxLxD))

  def context_kv(self, ctx_BxQxC: jax.Array) -> dict:
    return self.attn.project_kv(self.ln_kv(ctx_BxQxC))

  def decode(self, x_BxLxD: jax.Array, kv: dict) -> jax.Array:
    x_BxLxD = x_BxLxD + self.attn.attend(self.ln1(x_BxLxD), kv)
    return x_BxLxD + self.mlp(self.ln2(x_BxLxD))


class OpenClipDecoderLayer(nnx.Module):
  """One open_clip multimodal layer: a causal self-attention block, then a `CrossBlock` (two MLPs)."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, ctx_dim: int, *, impl: str, act: str, norm_eps: float,
               dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(impl=impl, act=act, norm_eps=norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_block = layers.Block(dim, heads, mlp_dim, **kw)
    self.cross_block = CrossBlock(dim, heads, mlp_dim, ctx_dim, **kw)

  def __call__(self, x_BxLxD: jax.Array, *, mask_BxTxT: jax.Array | None = None, causal: bool = False,
               ctx_BxSxC: jax.Array | None = None) -> jax.Array:
    return self.cross_block(self.self_block(x_BxLxD, mask_BxTxT=mask_BxTxT, causal=causal), ctx_BxSxC)

  def init_cache(self, batch: int, max_len: int, ctx_BxSxC: jax.Array) -> dict:
    return {"self": self.self_block.init_cache(batch, max_len), "cross": self.cross_block.context_kv(ctx_BxSxC)}

  def decode(self, x_BxLxD: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    x_BxLxD, self_cache = self.self_block.decode(x_BxLxD, cache["self"], pos)
    return self.cross_block.decode(x_BxLxD, cache["cross"]), {**cache, "self": self_cache}


DECODER_LAYOUTS = ("fused", "open_clip")


class MultimodalDecoder(nnx.Module):
  """Causal self-attention over text tokens, cross-attention to image tokens, vocabulary head.

  `layout`: `fused` blocks do self-attention, cross-attention and one MLP (CoCa paper);
  `open_clip` layers are a self-attention block and a cross-attention block, each with
  its own MLP (open_clip's MultimodalTransformer).
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, depth: int, ctx_dim: int, vocab_size: int,
               *, layout: str = "fused", tie_embedding: bool = False, attention: str, remat: str, scan: bool,
               act: str, norm_eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    if layout not in DECODER_LAYOUTS:
      raise ValueError(f"model.decoder.layout must be one of {'|'.join(DECODER_LAYOUTS)}, got {layout!r}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    block_kw = dict(impl=attention, act=act, norm_eps=norm_eps, dtype=dtype, param_dtype=param_dtype)
    if layout == "fused":
      make = lambda r: layers.Block(dim, heads, mlp_dim, cross_dim=ctx_dim, **block_kw, rngs=r)
    else:
      make = lambda r: OpenClipDecoderLayer(dim, heads, mlp_dim, ctx_dim, **block_kw, rngs=r)
    self.blocks = layers.Stack(make, depth, scan=scan, remat=remat, rngs=rngs)
    self.ln = layers.layer_norm(dim, eps=norm_eps, **kw)
    self.head = (None if tie_embedding
                 else layers.dense(dim, vocab_size, ("embed", "vocab"), use_bias=False, **kw))

  def __call__(self, tokens_BxLxD: jax.Array, image_BxQxC: jax.Array,
               embed: nnx.Embed | None = None, *, mask_BxLxL: jax.Array | None = None) -> jax.Array:
    """Returns caption logits [B, L, V]: position t predicts token t+1.

    Self-attention is causal unless `mask_BxLxL` is given (then that mask alone).
    With a tied embedding the vocabulary head is `embed`'s table, transposed.
    """
    return self.project(self.features(tokens_BxLxD, image_BxQxC, mask_BxLxL=mask_BxLxL), embed)

  def features(self, tokens_BxLxD: jax.Array, image_BxQxC: jax.Array, *,
               mask_BxLxL: jax.Array | None = None) -> jax.Array:
    """The normed features [B, L, D] the vocabulary head reads."""
    x = self.blocks(tokens_BxLxD, causal=mask_BxLxL is None, mask=mask_BxLxL, ctx=image_BxQxC)
    return self.ln(x)

  def head_kernel(self, embed: nnx.Embed | None) -> jax.Array:
    """The vocabulary head as a [D, V] matrix (the input embedding, transposed, when tied)."""
    return embed.embedding[...].T if self.head is None else self.head.kernel[...]

  def project(self, x_BxLxD: jax.Array, embed: nnx.Embed | None) -> jax.Array:
    return embed.attend(x_BxLxD) if self.head is None else self.head(x_BxLxD)

  def init_cache(self, image_BxQxC: jax.Array, max_len: int) -> Any:
    batch = jax.tree.leaves(image_BxQxC)[0].shape[0]  # an array, or a layers.Masked (NaFlex)
    return self.blocks.init_cache(batch, max_len, image_BxQxC)

  def decode(self, tokens_BxTxD: jax.Array, cache: Any, pos: jax.Array,
             embed: nnx.Embed | None = None) -> tuple[jax.Array, Any]:
    """Logits [B, T, V] of T new tokens at positions pos.., and the updated cache."""
    x, cache = self.blocks.decode(tokens_BxTxD, cache, pos)
    return self.project(self.ln(x), embed), cache
