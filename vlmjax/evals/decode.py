"""Autoregressive caption decoding: greedy, beam search, top-k / top-p sampling.

`generate` is traceable: call it inside `jax.jit` (`jit_generate` does, from a
graphdef and parameters). The model needs `caption_context(image) -> ctx` and
`caption_logits(ctx, text_BxL) -> logits_BxLxV` (position t predicts token t+1,
causally). How each step's logits are computed is a `Stepper`: `Cached` (the default
for models with `decode_step`) runs only the new token through the towers,
reading keys and values of earlier positions from a KV cache; `Recompute` runs
the whole zero-padded prefix buffer through the decoder at every step (the
reference the cache is tested against). Beam search reorders a stepper's state
with `jax.tree.map`, so any pytree whose leaves lead with the batch dimension works;
entries under a key in `SAME_FOR_ALL_BEAMS` (the context and the cross-attention
keys and values projected from it) are left in place, since every beam of an image
holds the same ones.

Output: tokens [B, T] with T = max_len, the BOS excluded, EOS included, PAD (0)
after it.

Shape legend: B batch, K beams, T max_len, V vocabulary, Q context tokens, C context width.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

METHODS = ("greedy", "beam", "sample")
PAD = 0
SAME_FOR_ALL_BEAMS = ("ctx", "cross")  # stepper-state keys that depend on the image only


class Stepper(Protocol):
  def init(self, model, ctx_BxQxC: jax.Array, max_len: int) -> Any: ...
  def step(self, model, state: Any, token_B: jax.Array, t: jax.Array) -> tuple[jax.Array, Any]: ...


class Recompute:
  """Uncached: writes token t into a fixed [B, T] buffer and recomputes all positions."""

  def init(self, model, ctx_BxQxC, max_len):
    return {"ctx": ctx_BxQxC, "buf": jnp.zeros((batch_of(ctx_BxQxC), max_len), jnp.int32)}

  def step(self, model, state, token_B, t):
    buf_BxT = jax.lax.dynamic_update_slice_in_dim(state["buf"], token_B[:, None].astype(jnp.int32), t, axis=1)
    logits_BxTxV = model.caption_logits(state["ctx"], buf_BxT)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, t, axis=1, keepdims=False)
    return logits_BxV.astype(jnp.float32), {**state, "buf": buf_BxT}


class Cached:
  """KV-cached: each step runs only the new token through the towers (`model.decode_step`)."""

  def init(self, model, ctx_BxQxC, max_len):
    return model.decode_init(ctx_BxQxC, max_len)

  def step(self, model, state, token_B, t):
    logits_BxV, state = model.decode_step(state, token_B.astype(jnp.int32), t)
    return logits_BxV.astype(jnp.float32), state


def default_stepper(model) -> Stepper:
  return Cached() if hasattr(model, "decode_step") else Recompute()


def filter_logits(logits_BxV: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top k, then outside the smallest nucleus of mass >= top_p, to -inf.

  Ties at the k-th value are all kept; the nucleus always keeps the most likely token.
  """
  if top_k > 0:
    kth_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    # a token stays if the mass ranked above it is short of top_p; the most likely one always does
    keep = (mass_before_BxV < top_p) | (jnp.arange(sorted_BxV.shape[-1]) == 0)
    cutoff_B = jnp.min(jnp.where(keep, sorted_BxV, jnp.inf), axis=-1)
    logits_BxV = jnp.where(logits_BxV < cutoff_B[:, None], -jnp.inf, logits_BxV)
  return logits_BxV


def generate(model, image_BxHxWx3: jax.Array, *, max_len: int, method: str = "greedy", beam_size: int = 4,
             top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0, length_penalty: float = 1.0,
             rng: jax.Array | None = None, bos_id: int = 1, eos_id: int = 2,
             stepper: Stepper | None = None, prompt_BxL: jax.Array | None = None) -> jax.Array:
  """Decodes captions for a batch of images: tokens [B, max_len] (see module docstring).

  `prompt_BxL` (greedy and sample): each row's prompt, [bos] then its tokens, zero-padded; decoding
  starts from it (its tokens are fed, not predicted, and stand in the output before the
  continuation), as LocCa's referring-expression and grounded-captioning tasks are asked.

  greedy: argmax. sample: softmax(logits / temperature) after top-k / top-p filtering (needs
  `rng`). beam: `beam_size` beams by summed log-probability; the returned beam maximises
  score / length ** length_penalty (length counts the EOS).
  """
  if method not in METHODS:
    raise ValueError(f"decode method must be one of {'|'.join(METHODS)}, got {method!r}")
  if method == "sample" and rng is None:
    raise ValueError("decode method 'sample' needs an rng")
  if prompt_BxL is not None and method == "beam" and beam_size > 1:
    raise ValueError("a decoding prompt works with greedy or sample decoding, not beam search")
  stepper = stepper or default_stepper(model)
  ctx_BxQxC = model.caption_context(image_BxHxWx3)
  if method == "beam" and beam_size > 1:  # a beam of one is greedy search
    return _beam(model, stepper, ctx_BxQxC, max_len, beam_size, length_penalty, bos_id, eos_id)

  def choose(logits_BxV, t):
    if method != "sample":  # greedy, or a beam of one
      return jnp.argmax(logits_BxV, axis=-1)
    logits_BxV = filter_logits(logits_BxV / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(rng, t), logits_BxV, axis=-1)

  B = batch_of(ctx_BxQxC)
  if prompt_BxL is None:
    prompt_BxL = jnp.full((B, 1), bos_id, jnp.int32)
  prompt_BxT1 = jnp.pad(prompt_BxL, ((0, 0), (0, max(0, max_len + 1 - prompt_BxL.shape[1]))))[:, :max_len + 1]

  def body(carry):
    t, token_B, state, out_BxT, done_B = carry
    logits_BxV, state = stepper.step(model, state, token_B, t)
    forced_B = jax.lax.dynamic_index_in_dim(prompt_BxT1, t + 1, axis=1, keepdims=False)
    token_B = jnp.where(forced_B != PAD, forced_B, choose(logits_BxV, t))
    token_B = jnp.where(done_B, PAD, token_B).astype(jnp.int32)
    out_BxT = jax.lax.dynamic_update_slice_in_dim(out_BxT, token_B[:, None], t, axis=1)
    return t + 1, token_B, state, out_BxT, done_B | ((forced_B == PAD) & (token_B == eos_id))

  carry = (jnp.int32(0), prompt_BxT1[:, 0].astype(jnp.int32), stepper.init(model, ctx_BxQxC, max_len),
           jnp.zeros((B, max_len), jnp.int32), jnp.zeros((B,), bool))
  carry = jax.lax.while_loop(lambda c: (c[0] < max_len) & ~jnp.all(c[4]), body, carry)
  return carry[3]


def batch_of(ctx) -> int:
  """The batch of a caption context: an array [B, Q, C] or a pytree of them (NaFlex's `layers.Masked`)."""
  return jax.tree.leaves(ctx)[0].shape[0]


def _beam(model, stepper, ctx_BxQxC, max_len, K, length_penalty, bos_id, eos_id):
  """K live beams and a pool of the K best finished captions (as Hugging Face, T5X and Flax do):
  each step ranks the 2K best continuations of the live beams by summed log-probability; those
  ending in EOS go to the pool, ranked by score / length ** length_penalty, and the best K others
  stay live. A finished caption never takes a live beam's place, so a caption that would win
  after length normalisation is not pruned for it. Stops when no live beam can still beat the
  pool's worst; at max_len, the live beams join the pool as they are."""
  B = batch_of(ctx_BxQxC)
  alpha = float(length_penalty)
  norm = lambda score, length: score / jnp.asarray(length, jnp.float32) ** alpha
  ctx_BKxQxC = jax.tree.map(lambda x: jnp.repeat(x, K, axis=0), ctx_BxQxC)
  state = stepper.init(model, ctx_BKxQxC, max_len)
  score_BxK = jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf)[None].repeat(B, axis=0)  # one live beam at first

  def body(carry):
    t, token_BK, state, out_BxKxT, score_BxK, pool_BxKxT, pool_score_BxK = carry
    logits_BKxV, state = stepper.step(model, state, token_BK, t)
    V = logits_BKxV.shape[-1]
    logp_BxKxV = jax.nn.log_softmax(logits_BKxV, axis=-1).reshape(B, K, V)
    cand_BxKV = (score_BxK[..., None] + logp_BxKxV).reshape(B, K * V)
    n = min(2 * K, K * V)  # at most K of them end in EOS (one per beam): K others stay live
    cand_score_BxN, idx_BxN = jax.lax.top_k(cand_BxKV, n)
    parent_BxN, token_BxN = idx_BxN // V, (idx_BxN % V).astype(jnp.int32)
    cand_out_BxNxT = jax.lax.dynamic_update_slice_in_dim(
        jnp.take_along_axis(out_BxKxT, parent_BxN[..., None], axis=1), token_BxN[..., None], t, axis=2)
    ends_BxN = token_BxN == eos_id
    # finished: into the pool by normalised score (the length counts the EOS)
    merged_BxM = jnp.concatenate([pool_score_BxK, jnp.where(ends_BxN, norm(cand_score_BxN, t + 1), -jnp.inf)], 1)
    pool_score_BxK, keep_BxK = jax.lax.top_k(merged_BxM, K)
    pool_BxKxT = jnp.take_along_axis(jnp.concatenate([pool_BxKxT, cand_out_BxNxT], 1), keep_BxK[..., None], axis=1)
    # live: the K best continuations that did not end
    score_BxK, live_BxK = jax.lax.top_k(jnp.where(ends_BxN, -jnp.inf, cand_score_BxN), K)
    beam_BxK = jnp.take_along_axis(parent_BxN, live_BxK, axis=1)
    out_BxKxT = jnp.take_along_axis(cand_out_BxNxT, live_BxK[..., None], axis=1)
    token_BxK = jnp.take_along_axis(token_BxN, live_BxK, axis=1)
    flat = (beam_BxK + K * jnp.arange(B)[:, None]).reshape(B * K)
    state = jax.tree_util.tree_map_with_path(lambda path, x: x if _same_for_all_beams(path) else x[flat], state)
    return t + 1, token_BxK.reshape(B * K), state, out_BxKxT, score_BxK, pool_BxKxT, pool_score_BxK

  def going(carry):
    t, _, _, _, score_BxK, _, pool_score_BxK = carry
    # a live beam's score only falls; its normalised score is best at the most favourable length
    best_B = jnp.max(score_BxK, axis=1)
    reachable_B = jnp.maximum(norm(best_B, jnp.minimum(t + 1, max_len)), norm(best_B, max_len))
    return (t < max_len) & jnp.any(reachable_B > jnp.min(pool_score_BxK, axis=1))

  carry = (jnp.int32(0), jnp.full((B * K,), bos_id, jnp.int32), state, jnp.zeros((B, K, max_len), jnp.int32),
           score_BxK, jnp.zeros((B, K, max_len), jnp.int32), jnp.full((B, K), -jnp.inf))
  t, _, _, out_BxKxT, score_BxK, pool_BxKxT, pool_score_BxK = jax.lax.while_loop(going, body, carry)
  live_BxK = jnp.where(t == max_len, norm(score_BxK, max_len), -jnp.inf)  # unfinished at max_len
  all_BxM = jnp.concatenate([pool_score_BxK, live_BxK], axis=1)
  best_B = jnp.argmax(all_BxM, axis=1)
  return jnp.take_along_axis(jnp.concatenate([pool_BxKxT, out_BxKxT], 1), best_B[:, None, None], axis=1)[:, 0]


def _same_for_all_beams(path) -> bool:
  return any(getattr(k, "key", None) in SAME_FOR_ALL_BEAMS for k in path)


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _generate_jit(params, image_BxHxWx3, rng, prompt_BxL, *, graphdef: nnx.GraphDef, options: tuple):
  return generate(nnx.merge(graphdef, params), image_BxHxWx3, rng=rng, prompt_BxL=prompt_BxL, **dict(options))


def jit_generate(graphdef: nnx.GraphDef, params, image_BxHxWx3: jax.Array, rng: jax.Array | None = None,
                 prompt_BxL: jax.Array | None = None, **options) -> jax.Array:
  """`generate` compiled once per (graphdef, options, shapes); parameters stay as sharded."""
  if rng is None:
    rng = jax.random.key(0)
  return _generate_jit(params, image_BxHxWx3, rng, prompt_BxL, graphdef=graphdef,
                       options=tuple(sorted(options.items())))
