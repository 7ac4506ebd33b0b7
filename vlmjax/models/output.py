"""What every model's forward pass returns to the losses."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Output:
  """What a model's forward pass gives its losses; fields a model lacks are None."""
  image_emb: jax.Array | None = None      # [B, E], L2-normalised
  text_emb: jax.Array | None = None       # [B, E], L2-normalised
  logit_scale: jax.Array | None = None    # scalar, the positive multiplier (exp of the parameter)
  logit_bias: jax.Array | None = None     # scalar or None
  caption_logits: jax.Array | None = None  # [B, L, V], position t predicts token t+1
  # What the logits are made of, for a loss that never builds them whole (`loss.caption_chunk`);
  # under jit, whichever of the two a loss does not read is dropped by XLA.
  caption_features: jax.Array | None = None  # [B, L, D], caption_logits = features @ kernel
  caption_kernel: jax.Array | None = None    # [D, V]


def l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
