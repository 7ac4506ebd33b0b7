"""The optimiser: AdamW with linear warmup and cosine decay, gradient clipping, decay mask."""

from __future__ import annotations

import jax
import ml_collections
import optax


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=total_steps, end_value=cfg.lr * cfg.end_lr_ratio)


def decay_mask(params) -> dict:
  """Weight decay on matrices (kernels, embeddings); not on biases, norms, scales or queries."""
  def decays(path, leaf) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return name in ("kernel", "embedding") and leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


def build(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
  )
  return tx, lr
