"""Losses: pure functions of arrays, plus `composite` which adds the configured terms.

Shape legend: B batch (global), b batch per device, N devices in the ring,
E embedding dim, L text length, V vocabulary.
Contrastive losses take the global batch; under `jax.jit` with a batch sharded
over the mesh, XLA inserts the collectives, so the value and its gradients are
those of the single-device computation. `sigmoid_contrastive_ring` is the same
loss as `sigmoid_contrastive` computed without ever building the global BxB
logits: memory per device grows with b^2, not B^2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, PartitionSpec as P

from vlmjax.errors import ConfigError
from vlmjax.registry import Registry


def softmax_contrastive(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array,
                        logit_scale: jax.Array) -> jax.Array:
  """CLIP's InfoNCE: mean of image->text and text->image cross-entropy, matching pairs on the diagonal."""
  logits_BxB = logit_scale * jnp.einsum(
      "ie,te->it", image_emb_BxE.astype(jnp.float32), text_emb_BxE.astype(jnp.float32))
  diag_B = jnp.diagonal(logits_BxB)
  i2t = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=1) - diag_B)
  t2i = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=0) - diag_B)
  return 0.5 * (i2t + t2i)


def _sigmoid_block_sum(image_emb_bxE: jax.Array, text_emb_bxE: jax.Array, logit_scale: jax.Array,
                       logit_bias: jax.Array, positive_diagonal: bool) -> jax.Array:
  """Sum over one block of pairs of -log sigmoid(z * logit); z = +1 on the diagonal iff `positive_diagonal`."""
  logits_bxb = logit_scale * jnp.einsum(
      "ie,te->it", image_emb_bxE.astype(jnp.float32), text_emb_bxE.astype(jnp.float32)) + logit_bias
  z_bxb = -jnp.ones_like(logits_bxb)
  if positive_diagonal:
    z_bxb = z_bxb + 2.0 * jnp.eye(logits_bxb.shape[0], dtype=jnp.float32)
  return -jnp.sum(jax.nn.log_sigmoid(z_bxb * logits_bxb))


def sigmoid_contrastive(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array,
                        logit_scale: jax.Array, logit_bias: jax.Array) -> jax.Array:
  """SigLIP: -1/B sum_ij log sigmoid(z_ij (scale x_i.y_j + bias)), z = +1 for matching pairs, -1 otherwise."""
  total = _sigmoid_block_sum(image_emb_BxE, text_emb_BxE, jnp.asarray(logit_scale, jnp.float32),
                             jnp.asarray(logit_bias, jnp.float32), positive_diagonal=True)
  return total / image_emb_BxE.shape[0]


def sigmoid_contrastive_ring(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array,
                             logit_scale: jax.Array, logit_bias: jax.Array, *, mesh: Mesh,
                             axes: tuple[str, ...] = ("data", "fsdp")) -> jax.Array:
  """`sigmoid_contrastive` with the batch sharded over `axes`, chunked around a ring of devices.

  Each device keeps its b = B/N images and passes its texts to the next device N-1
  times, summing its block of the loss at every step; only the first step (its own
  texts) has positive pairs, on the block's diagonal. The steps are rematerialised
  in the backward pass, so a device holds O(b^2) logits, never BxB or N of bxb.
  Returns the global mean, replicated. Mesh axes of `axes` that are absent or of
  size 1 are ignored; with none left this is `sigmoid_contrastive`.
  """
  ring = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
  if not ring:
    return sigmoid_contrastive(image_emb_BxE, text_emb_BxE, logit_scale, logit_bias)
  n = 1
  for a in ring:
    n *= mesh.shape[a]
  batch = image_emb_BxE.shape[0]
  if batch % n:
    raise ValueError(f"batch {batch} is not divisible by the {n} devices of mesh axes {ring}")
  to_next = [(i, (i + 1) % n) for i in range(n)]
  negatives = jax.checkpoint(lambda x, y, s, b: _sigmoid_block_sum(x, y, s, b, positive_diagonal=False))

  def local(image_emb_bxE, text_emb_bxE, scale, bias):
    total = _sigmoid_block_sum(image_emb_bxE, text_emb_bxE, scale, bias, positive_diagonal=True)

    def step(_, carry):
      text_emb_bxE, total = carry
      text_emb_bxE = jax.lax.ppermute(text_emb_bxE, ring, to_next)
      return text_emb_bxE, total + negatives(image_emb_bxE, text_emb_bxE, scale, bias)

    _, total = jax.lax.fori_loop(1, n, step, (text_emb_bxE, total))
    return jax.lax.psum(total, ring) / batch

  mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(ring), P(ring), P(), P()), out_specs=P(),
                         check_vma=True)
  return mapped(image_emb_BxE, text_emb_BxE, jnp.asarray(logit_scale, jnp.float32),
                jnp.asarray(logit_bias, jnp.float32))


def caption_xent(logits_BxLxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array,
                 label_smoothing: float = 0.0, z_loss: float = 0.0) -> jax.Array:
  """Next-token cross-entropy averaged over the tokens where `mask` is true.

  `z_loss` adds z_loss * mean(logsumexp(logits)^2) over the same tokens (PaLM's
  auxiliary loss, keeping the softmax normaliser near 1).
  """
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll_BxL = (1.0 - label_smoothing) * nll_BxL - label_smoothing * logp_BxLxV.mean(axis=-1)
  if z_loss:
    nll_BxL = nll_BxL + z_loss * jnp.square(jax.nn.logsumexp(logits_BxLxV, axis=-1))
  mask_BxL = mask_BxL.astype(jnp.float32)
  return jnp.sum(nll_BxL * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0)


def _token_nll_sums(logits_BxCxV: jax.Array, targets_BxC: jax.Array, mask_BxC: jax.Array,
                    label_smoothing: float, z_loss: float) -> jax.Array:
  """Sum over masked tokens of the per-token loss of `caption_xent` (float32)."""
  logits_BxCxV = logits_BxCxV.astype(jnp.float32)
  lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
  nll_BxC = lse_BxC - jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll_BxC = (1.0 - label_smoothing) * nll_BxC + label_smoothing * (lse_BxC - logits_BxCxV.mean(axis=-1))
  if z_loss:
    nll_BxC = nll_BxC + z_loss * jnp.square(lse_BxC)
  return jnp.sum(nll_BxC * mask_BxC.astype(jnp.float32))


def caption_xent_chunked(hidden_BxLxD: jax.Array, kernel_DxV: jax.Array, targets_BxL: jax.Array,
                         mask_BxL: jax.Array, *, chunk: int, label_smoothing: float = 0.0,
                         z_loss: float = 0.0) -> jax.Array:
  """`caption_xent(hidden @ kernel, ...)` computed `chunk` positions at a time.

  The vocabulary projection and the float32 softmax run per chunk of the sequence
  under `jax.checkpoint` (recomputed in the backward pass), so the B x L x V logits
  never exist whole; memory grows with B x chunk x V. The batch axis stays whole in
  every chunk, so a batch sharded over devices stays sharded.
  """
  B, L, D = hidden_BxLxD.shape
  n = -(-L // chunk)
  chunk = -(-L // n)  # at most `chunk`, as even as n chunks allow: 75 positions -> 5 x 15, not 5 x 16
  pad = n * chunk - L
  if pad:
    hidden_BxLxD = jnp.pad(hidden_BxLxD, ((0, 0), (0, pad), (0, 0)))
    targets_BxL = jnp.pad(targets_BxL, ((0, 0), (0, pad)))
    mask_BxL = jnp.pad(mask_BxL, ((0, 0), (0, pad)))
  split = lambda x: jnp.moveaxis(x.reshape(B, n, chunk, *x.shape[2:]), 1, 0)  # [n, B, chunk, ...]

  @jax.checkpoint
  def one(total, xs):
    h_BxCxD, t_BxC, m_BxC = xs
    logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD, kernel_DxV.astype(h_BxCxD.dtype))
    return total + _token_nll_sums(logits_BxCxV, t_BxC, m_BxC, label_smoothing, z_loss), None

  total, _ = jax.lax.scan(one, jnp.zeros((), jnp.float32), (split(hidden_BxLxD), split(targets_BxL),
                                                              split(mask_BxL)))
  return total / jnp.maximum(jnp.sum(mask_BxL.astype(jnp.float32)), 1.0)


# --- the configured objective: contrastive losses and loss terms as tables -----------------------
#
# A contrastive loss (picked by `loss.contrastive`) maps (model output, context) to (value, extra
# metrics). A loss term is active when its weight key in the `loss` config is > 0 (a term registered
# by user code is off in configs without its key); `composite` adds the active terms, in
# registration order, each times its weight. To add either: a function and one registry line.


@dataclasses.dataclass(frozen=True)
class Context:
  """What a loss may need besides the model output and the batch."""
  mesh: Mesh | None = None
  batch_axes: tuple[str, ...] = ("data", "fsdp")


def _needs_bias(out, name: str) -> None:
  if out.logit_bias is None:
    raise ConfigError(f"loss.contrastive={name!r} needs a model with a learned logit bias (a two-tower model "
                      "with model.init_logit_bias set, e.g. -10.0 as SigLIP; CoCa has none); or use "
                      "loss.contrastive=softmax")


def _softmax(out, ctx: Context) -> tuple[jax.Array, dict]:
  return softmax_contrastive(out.image_emb, out.text_emb, out.logit_scale), {"logit_scale": out.logit_scale}


def _sigmoid(out, ctx: Context) -> tuple[jax.Array, dict]:
  _needs_bias(out, "sigmoid")
  value = sigmoid_contrastive(out.image_emb, out.text_emb, out.logit_scale, out.logit_bias)
  return value, {"logit_scale": out.logit_scale, "logit_bias": out.logit_bias}


def _sigmoid_ring(out, ctx: Context) -> tuple[jax.Array, dict]:
  _needs_bias(out, "sigmoid_ring")
  if ctx.mesh is None:
    raise ConfigError("loss.contrastive='sigmoid_ring' needs the device mesh (it runs inside the train step only)")
  value = sigmoid_contrastive_ring(out.image_emb, out.text_emb, out.logit_scale, out.logit_bias,
                                   mesh=ctx.mesh, axes=ctx.batch_axes)
  return value, {"logit_scale": out.logit_scale, "logit_bias": out.logit_bias}


CONTRASTIVE = Registry("loss.contrastive", {
    "softmax": _softmax, "sigmoid": _sigmoid, "sigmoid_ring": _sigmoid_ring, "none": None})


@dataclasses.dataclass(frozen=True)
class Term:
  """A loss term: `fn(out, batch, cfg, ctx) -> (value, metrics) | None` (None: nothing to add), weighted
  by `cfg[weight]`; `checks` are the `loss` keys `check` requires to be numbers >= 0."""
  weight: str
  fn: Callable[[Any, dict, ml_collections.ConfigDict, Context], tuple[jax.Array, dict] | None]
  checks: tuple[str, ...] = ()


def contrastive_term(out, batch: dict, cfg: ml_collections.ConfigDict, ctx: Context):
  fn = CONTRASTIVE.lookup(cfg.contrastive)
  if fn is None:
    return None
  value, extra = fn(out, ctx)
  return value, {"contrastive_loss": value, **extra}


def caption_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(targets, mask) of the caption loss: the text shifted by one, its non-pad tokens; or, with LocCa's
  tasks (`decoder_text`, `decoder_loss` in the batch), the task sequence and its target tokens."""
  if "decoder_text" in batch:
    return batch["decoder_text"][:, 1:], batch["decoder_loss"][:, 1:]
  return batch["text"][:, 1:], batch["text"][:, 1:] != 0


def caption_term(out, batch: dict, cfg: ml_collections.ConfigDict, ctx: Context):
  """Next-token cross-entropy of the caption logits against the batch's text shifted by one."""
  targets_BxL, mask_BxL = caption_targets(batch)
  if cfg.caption_chunk:
    if out.caption_features is None:
      raise ConfigError("loss.caption_chunk needs a model whose caption head exposes its features (CoCa, CapPa); "
                        "set --config.loss.caption_chunk=0 for this model")
    value = caption_xent_chunked(out.caption_features[:, :-1], out.caption_kernel, targets_BxL, mask_BxL,
                                 chunk=cfg.caption_chunk, label_smoothing=cfg.label_smoothing, z_loss=cfg.z_loss)
  else:
    value = caption_xent(out.caption_logits[:, :-1], targets_BxL, mask_BxL,
                         label_smoothing=cfg.label_smoothing, z_loss=cfg.z_loss)
  return value, {"caption_loss": value}


TERMS = Registry("loss term", {
    "contrastive": Term("contrastive_weight", contrastive_term),
    "caption": Term("caption_weight", caption_term, checks=("z_loss", "caption_chunk")),
})


def check(cfg: ml_collections.ConfigDict) -> None:
  """A one-line ConfigError for a `loss` config that cannot work (before anything is built)."""
  CONTRASTIVE.lookup(cfg.contrastive)
  for key in [k for t in TERMS.values() if t.weight in cfg for k in (t.weight, *t.checks)]:
    if not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
      raise ConfigError(f"loss.{key}={cfg[key]!r} must be a number >= 0")
  if not 0 <= cfg.label_smoothing < 1:
    raise ConfigError(f"loss.label_smoothing={cfg.label_smoothing!r} must lie in [0, 1)")


def composite(out, batch: dict, cfg: ml_collections.ConfigDict, *, mesh: Mesh | None = None,
              batch_axes: tuple[str, ...] = ("data", "fsdp")) -> tuple[jax.Array, dict]:
  """Adds the active loss terms with their weights; returns (loss, metrics).

  `sigmoid_ring` needs the `mesh` and the mesh axes the batch is split over.
  """
  ctx = Context(mesh=mesh, batch_axes=batch_axes)
  metrics, total = {}, jnp.zeros((), jnp.float32)
  for term in TERMS.values():
    if term.weight not in cfg or not cfg[term.weight]:
      continue
    added = term.fn(out, batch, cfg, ctx)
    if added is None:
      continue
    value, term_metrics = added
    metrics.update(term_metrics)
    total = total + cfg[term.weight] * value
  metrics["loss"] = total
  return total, metrics
