"""Model facts without allocating it: parameter count per component, training FLOPs per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vlmjax import losses, models


def _abstract(cfg: ml_collections.ConfigDict):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, nnx.to_pure_dict(state)


def param_counts(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """{component: parameters} for each top-level part of the model, plus "total"."""
  _, params = _abstract(cfg)
  out = {name: sum(x.size for x in jax.tree.leaves(sub)) for name, sub in params.items()}
  out["total"] = sum(out.values())
  return out


def train_flops_per_example(cfg: ml_collections.ConfigDict) -> float:
  """FLOPs of forward + backward for one example, as XLA counts them (lowered, not compiled)."""
  graphdef, params = _abstract(cfg)
  S, L = cfg.model.image_size, cfg.model.text.context_length
  batch = {"image": jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32),
           "text": jax.ShapeDtypeStruct((1, L), jnp.int32)}

  def loss(p, b):
    out = nnx.merge(graphdef, p)(b["image"], b["text"], train=True)
    return losses.composite(out, b, cfg.loss)[0]
  return float(jax.jit(jax.grad(loss)).lower(params, batch).cost_analysis()["flops"])
