"""Losses: pure functions of arrays, plus `composite` which adds the configured terms.

Shape legend: B batch (global), E embedding dim, L text length, V vocabulary.
Contrastive losses take the global batch; under `jax.jit` with a batch sharded
over the mesh, XLA inserts the collectives, so the value and its gradients are
those of the single-device computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

CONTRASTIVE = ("softmax", "none")


def softmax_contrastive(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array,
                        logit_scale: jax.Array) -> jax.Array:
  """CLIP's InfoNCE: mean of image->text and text->image cross-entropy, matching pairs on the diagonal."""
  logits_BxB = logit_scale * jnp.einsum(
      "ie,te->it", image_emb_BxE.astype(jnp.float32), text_emb_BxE.astype(jnp.float32))
  diag_B = jnp.diagonal(logits_BxB)
  i2t = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=1) - diag_B)
  t2i = jnp.mean(jax.nn.logsumexp(logits_BxB, axis=0) - diag_B)
  return 0.5 * (i2t + t2i)


def caption_xent(logits_BxLxV: jax.Array, targets_BxL: jax.Array, mask_BxL: jax.Array,
                 label_smoothing: float = 0.0) -> jax.Array:
  """Next-token cross-entropy averaged over the tokens where `mask` is true."""
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  nll_BxL = -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll_BxL = (1.0 - label_smoothing) * nll_BxL - label_smoothing * logp_BxLxV.mean(axis=-1)
  mask_BxL = mask_BxL.astype(jnp.float32)
  return jnp.sum(nll_BxL * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0)


def composite(out, batch: dict, cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """Adds the configured loss terms with their weights; returns (loss, metrics)."""
  if cfg.contrastive not in CONTRASTIVE:
    raise ValueError(f"loss.contrastive must be one of {'|'.join(CONTRASTIVE)}, got {cfg.contrastive!r}")
  metrics, total = {}, jnp.zeros((), jnp.float32)
  if cfg.contrastive == "softmax" and cfg.contrastive_weight:
    con = softmax_contrastive(out.image_emb, out.text_emb, out.logit_scale)
    metrics["contrastive_loss"] = con
    metrics["logit_scale"] = out.logit_scale
    total = total + cfg.contrastive_weight * con
  if cfg.caption_weight:
    text_BxL = batch["text"]
    cap = caption_xent(out.caption_logits[:, :-1], text_BxL[:, 1:], text_BxL[:, 1:] != 0,
                       label_smoothing=cfg.label_smoothing)
    metrics["caption_loss"] = cap
    total = total + cfg.caption_weight * cap
  metrics["loss"] = total
  return total, metrics
