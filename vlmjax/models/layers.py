"""Building blocks: dense layers with logical axes, attention, MLP, transformer blocks.

Shape legend: B batch, T query length, S key/value length, D width, H heads,
K head dim, F MLP width.

Every parameter carries an `axes` tuple of logical axis names (`embed`, `mlp`,
`heads`, `vocab`, `patch`, ...); `vlmjax.sharding` maps them to mesh axes from
the config. No mesh details live in model code.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import einops
import jax
import jax.numpy as jnp
from flax import nnx

Dtype = Any


def dtype_of(name: str) -> Dtype:
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def dense(din: int, dout: int, axes: tuple[str | None, str | None], *, dtype: Dtype,
          param_dtype: Dtype, rngs: nnx.Rngs, use_bias: bool = True, std: float | None = None) -> nnx.Linear:
  """A Linear whose kernel and bias carry logical axis names."""
  init = (nnx.initializers.normal(std) if std is not None
          else nnx.initializers.xavier_uniform())
  return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=init, kernel_metadata={"axes": axes},
                    bias_metadata={"axes": (axes[1],)}, rngs=rngs)


def layer_norm(dim: int, *, eps: float, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm with logical axes; `eps` is `model.norm_eps` (1e-5 CLIP / CoCa, 1e-6 SigLIP)."""
  if not eps > 0:
    raise ValueError(f"model.norm_eps must be a positive float, got {eps!r}")
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                       scale_metadata={"axes": ("embed",)}, bias_metadata={"axes": ("embed",)},
                       rngs=rngs)


def attention_impl(name: str) -> str | None:
  """Maps the config's `attention` setting to `jax.nn.dot_product_attention`'s implementation."""
  if name not in ("auto", "xla", "cudnn"):
    raise ValueError(f"model.attention must be one of auto|xla|cudnn, got {name!r}")
  return None if name == "auto" else name


def dot_product_attention(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array, *,
                          mask: jax.Array | None, causal: bool, impl: str | None) -> jax.Array:
  """`jax.nn.dot_product_attention`; `impl=None` (auto) uses cuDNN's fused kernel on GPU when the
  dtype and shapes allow it (jax checks them while tracing) and XLA's otherwise."""
  attend = functools.partial(jax.nn.dot_product_attention, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask,
                             is_causal=causal)
  if impl is None:
    if jax.default_backend() == "gpu" and q_BxTxHxK.dtype in (jnp.bfloat16, jnp.float16):
      try:
        return attend(implementation="cudnn")
      except (ValueError, NotImplementedError, TypeError, RuntimeError):
        pass  # e.g. a head dim or mask cuDNN does not take: fall through to XLA
    impl = "xla"
  return attend(implementation=impl)


class Attention(nnx.Module):
  """Multi-head attention; self-attention when `kv_BxSxD` is None, cross-attention otherwise."""

  def __init__(self, dim: int, heads: int, *, kv_dim: int | None = None, impl: str = "auto",
               dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
    kv_dim = kv_dim or dim
    self.heads, self.head_dim, self.impl, self.dtype = heads, dim // heads, attention_impl(impl), dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = dense(dim, dim, ("embed", "heads"), **kw)
    self.k = dense(kv_dim, dim, ("embed", "heads"), **kw)
    self.v = dense(kv_dim, dim, ("embed", "heads"), **kw)
    self.out = dense(dim, dim, ("heads", "embed"), **kw)

  def __call__(self, x_BxTxD: jax.Array, kv_BxSxD: jax.Array | None = None, *,
               mask_BxTxS: jax.Array | None = None, causal: bool = False) -> jax.Array:
    kv_BxSxD = x_BxTxD if kv_BxSxD is None else kv_BxSxD
    q_BxTxHxK = self._split(self.q(x_BxTxD))
    k_BxSxHxK = self._split(self.k(kv_BxSxD))
    v_BxSxHxK = self._split(self.v(kv_BxSxD))
    mask = None if mask_BxTxS is None else mask_BxTxS[:, None]
    o_BxTxHxK = dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask, causal=causal,
                                      impl=self.impl)
    return self.out(einops.rearrange(o_BxTxHxK, "b t h k -> b t (h k)"))

  def _split(self, x_BxTxD: jax.Array) -> jax.Array:
    """[B, T, H*K] -> [B, T, H, K]: one slice of the projection per head."""
    return einops.rearrange(x_BxTxD, "b t (h k) -> b t h k", h=self.heads)

  # Incremental decoding. A cache is a dict of arrays whose leading axis is the batch.

  def init_cache(self, batch: int, max_len: int) -> dict:
    """An empty self-attention cache of `max_len` positions."""
    shape = (batch, max_len, self.heads, self.head_dim)
    return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}

  def project_kv(self, kv_BxSxD: jax.Array) -> dict:
    """Keys and values of a fixed context (cross-attention), computed once per decode."""
    return {"k": self._split(self.k(kv_BxSxD)),
            "v": self._split(self.v(kv_BxSxD))}

  def attend(self, x_BxTxD: jax.Array, kv: dict, mask_BxTxS: jax.Array | None = None) -> jax.Array:
    """Attention of new queries over given keys and values."""
    q_BxTxHxK = self._split(self.q(x_BxTxD))
    mask = None if mask_BxTxS is None else mask_BxTxS[:, None]
    o_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, kv["k"].astype(q_BxTxHxK.dtype),
                                             kv["v"].astype(q_BxTxHxK.dtype), mask=mask, implementation="xla")
    return self.out(einops.rearrange(o_BxTxHxK, "b t h k -> b t (h k)"))

  def extend(self, x_BxTxD: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    """Causal self-attention of T new tokens at positions pos..pos+T-1 over the cache and themselves."""
    B, T, _ = x_BxTxD.shape
    new = self.project_kv(x_BxTxD)
    cache = {n: jax.lax.dynamic_update_slice_in_dim(cache[n], new[n].astype(cache[n].dtype), pos, axis=1)
             for n in ("k", "v")}
    S = cache["k"].shape[1]
    visible_TxS = jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None]
    return self.attend(x_BxTxD, cache, jnp.broadcast_to(visible_TxS, (B, T, S))), cache


ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf)
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # SigLIP, big_vision
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
}


def check_act(name: str) -> str:
  if name not in ACTIVATIONS:
    raise ValueError(f"model.act must be one of {'|'.join(ACTIVATIONS)}, got {name!r}")
  return name


class Mlp(nnx.Module):
  """fc1 -> activation (`model.act`) -> fc2."""

  def __init__(self, dim: int, hidden: int, *, act: str, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = check_act(act)  # the name: a static, hashable attribute
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), **kw)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), **kw)

  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    return self.fc2(ACTIVATIONS[self.act](self.fc1(x_BxTxD)))


class Masked(NamedTuple):
  """A cross-attention context whose padding is no key: NaFlex images' tokens, `encoders.encode_vision_context`.
  A pytree, so it goes through jit, scan and beam search (each leaf leads with the batch) as an array does."""
  tokens: jax.Array  # [B, S, C]
  mask: jax.Array    # [B, S] bool: true at the tokens to attend to


def split_context(ctx: jax.Array | Masked | None) -> tuple[jax.Array | None, jax.Array | None]:
  """(tokens_BxSxC, mask_BxS or None) of a context given as an array or `Masked`."""
  return (ctx.tokens, ctx.mask) if isinstance(ctx, Masked) else (ctx, None)


def context_mask(keep_BxS: jax.Array | None, queries: int) -> jax.Array | None:
  """[B, T, S] from a context's [B, S] mask (None: every key)."""
  if keep_BxS is None:
    return None
  return jnp.broadcast_to(keep_BxS[:, None, :], (keep_BxS.shape[0], queries, keep_BxS.shape[1]))


class Block(nnx.Module):
  """Pre-norm transformer block: self-attention, optional cross-attention (to an array or a `Masked`
  context), MLP."""

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, cross_dim: int | None = None,
               impl: str = "auto", act: str, norm_eps: float, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln1 = layer_norm(dim, eps=norm_eps, **kw)
    self.attn = Attention(dim, heads, impl=impl, **kw)
    if cross_dim is not None:
      self.ln_cross = layer_norm(dim, eps=norm_eps, **kw)
      self.cross = Attention(dim, heads, kv_dim=cross_dim, impl=impl, **kw)
    else:
      self.ln_cross = self.cross = None
    self.ln2 = layer_norm(dim, eps=norm_eps, **kw)
    self.mlp = Mlp(dim, mlp_dim, act=act, **kw)

  def __call__(self, x_BxTxD: jax.Array, *, mask_BxTxT: jax.Array | None = None,
               causal: bool = False, ctx_BxSxC: jax.Array | None = None) -> jax.Array:
    x_BxTxD = x_BxTxD + self.attn(self.ln1(x_BxTxD), mask_BxTxS=mask_BxTxT, causal=causal)
    if self.cross is not None:
      tokens_BxSxC, keep_BxS = split_context(ctx_BxSxC)
      x_BxTxD = x_BxTxD + self.cross(self.ln_cross(x_BxTxD), tokens_BxSxC,
                                     mask_BxTxS=context_mask(keep_BxS, x_BxTxD.shape[1]))
    return x_BxTxD + self.mlp(self.ln2(x_BxTxD))

  def init_cache(self, batch: int, max_len: int, ctx_BxSxC: jax.Array | Masked | None = None) -> dict:
    cache = {"self": self.attn.init_cache(batch, max_len)}
    if self.cross is not None:
      tokens_BxSxC, keep_BxS = split_context(ctx_BxSxC)
      cache["cross"] = self.cross.project_kv(tokens_BxSxC)
      if keep_BxS is not None:
        cache["cross"]["mask"] = keep_BxS
    return cache

  def decode(self, x_BxTxD: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    """Causal incremental step: new tokens at `pos` attend to the cached ones (and the context)."""
    h_BxTxD, self_cache = self.attn.extend(self.ln1(x_BxTxD), cache["self"], pos)
    x_BxTxD = x_BxTxD + h_BxTxD
    if self.cross is not None:
      keep = context_mask(cache["cross"].get("mask"), x_BxTxD.shape[1])
      x_BxTxD = x_BxTxD + self.cross.attend(self.ln_cross(x_BxTxD), cache["cross"], keep)
    return x_BxTxD + self.mlp(self.ln2(x_BxTxD)), {**cache, "self": self_cache}


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> jax.Array:
  """Fixed 2-D sine-cosine position embedding, [h*w, dim] (MoCo v3 / big_vision layout)."""
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {dim}")
  y, x = jnp.mgrid[:h, :w]
  omega = 1.0 / temperature ** (jnp.arange(dim // 4) / (dim // 4 - 1))
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)


REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute each block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the rest
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Stack(nnx.Module):
  """`depth` transformer blocks applied in order, unrolled or scanned.

  Unrolled, the blocks are a list (parameter paths `layers/0/...`). With `scan`,
  there is one block whose parameters carry a leading `layers` axis of size
  `depth`, applied by `jax.lax.scan`: same function, and compile time that does
  not grow with depth. Either way each block runs under `jax.checkpoint` with
  the `remat` policy.
  """

  def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, *, scan: bool,
               remat: str, rngs: nnx.Rngs):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {'|'.join(REMAT_POLICIES)}, got {remat!r}")
    self.scan, self.remat = scan, remat
    if not scan:
      self.layers = nnx.List([make_block(rngs) for _ in range(depth)])
      return
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_block(nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), depth)
    stacked = jax.vmap(lambda key: nnx.split(make_block(nnx.Rngs(params=key)))[1])(keys)
    self.layers = nnx.merge(graphdef, stacked)
    for _, var in nnx.iter_graph(self.layers):
      if isinstance(var, nnx.Variable):
        axes = var.get_metadata().get("axes") or (None,) * (var.ndim - 1)
        var.set_metadata(axes=("layers", *axes))

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, causal: bool = False,
               ctx: jax.Array | None = None) -> jax.Array:
    policy = REMAT_POLICIES[self.remat]
    if not self.scan:
      def apply(block, x):
        return block(x, mask_BxTxT=mask, causal=causal, ctx_BxSxC=ctx)
      if self.remat != "none":
        apply = nnx.remat(apply, policy=policy, prevent_cse=True)
      for block in self.layers:
        x = apply(block, x)
      return x

    graphdef, stacked = nnx.split(self.layers)

    def body(x, layer):
      block = nnx.merge(graphdef, layer)
      return block(x, mask_BxTxT=mask, causal=causal, ctx_BxSxC=ctx), None
    if self.remat != "none":
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)  # scan already blocks CSE
    return jax.lax.scan(body, x, stacked)[0]

  # Incremental decoding: per-layer caches, each leaf leading with the batch axis (scanned
  # stacks keep the layer axis second and move it first only inside the scan).

  def init_cache(self, batch: int, max_len: int, ctx: jax.Array | None = None) -> Any:
    if not self.scan:
      return [block.init_cache(batch, max_len, ctx) for block in self.layers]
    graphdef, stacked = nnx.split(self.layers)
    caches = jax.vmap(lambda layer: nnx.merge(graphdef, layer).init_cache(batch, max_len, ctx))(stacked)
    return jax.tree.map(lambda c: jnp.moveaxis(c, 0, 1), caches)

  def decode(self, x: jax.Array, cache: Any, pos: jax.Array) -> tuple[jax.Array, Any]:
    if not self.scan:
      new = []
      for block, c in zip(self.layers, cache):
        x, c = block.decode(x, c, pos)
        new.append(c)
      return x, new
    graphdef, stacked = nnx.split(self.layers)

    def body(x, layer_and_cache):
      layer, c = layer_and_cache
      return nnx.merge(graphdef, layer).decode(x, c, pos)
    x, caches = jax.lax.scan(body, x, (stacked, jax.tree.map(lambda c: jnp.moveaxis(c, 1, 0), cache)))
    return x, jax.tree.map(lambda c: jnp.moveaxis(c, 0, 1), caches)
