"""Model facts without allocating it: parameter count per component, training FLOPs per example.

`train_flops_per_example` is the model-FLOPs count used for MFU: the matrix
products of one forward + backward pass (2 FLOPs per multiply-add), read off
the traced program's live `dot_general`s (dead code removed, as XLA removes
it), with no activation recomputation (remat off) and attention counted as
the XLA implementation computes it (full score matrices, masks included).
Element-wise work is left out, as in the usual MFU accounting. `xla_flops_per_example` is XLA's own count, to cross-check.
The counts are of the training step, so patch dropout (`model.vision.patch_dropout`) is in effect:
the vision tower's products shrink with the kept patches. `train_flops` also gives the count without it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.extend import core as jax_core

from vlmjax import losses, models
from vlmjax.models.vision import kept_patches


def _abstract(cfg: ml_collections.ConfigDict):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, nnx.to_pure_dict(state)


def param_counts(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """{component: parameters} for each top-level part of the model, plus "total". A family's
  `COUNTED_APART` parts are summed into one entry (SigLIP 2's training-only LocCa decoder), and then
  "towers" counts the rest: the model as it is released and used."""
  _, params = _abstract(cfg)
  out = {name: sum(x.size for x in jax.tree.leaves(sub)) for name, sub in params.items()}
  apart = getattr(models.REGISTRY.lookup(cfg.model.name), "COUNTED_APART", {})
  groups = [g for g, parts in apart.items() if any(p in out for p in parts)]
  for group in groups:
    out[group] = sum(out.pop(p) for p in apart[group] if p in out)
  total = sum(out.values())
  if groups:
    out["towers"] = total - sum(out[g] for g in groups)
  out["total"] = total
  return out


def naflex_budget(cfg: ml_collections.ConfigDict) -> int | None:
  """The patches per image a NaFlex model is counted at: the run's `data.train.max_patches`, else the
  encoder's `max_num_patches`; None for other encoders."""
  if cfg.model.vision.kind != "naflex":
    return None
  return cfg.data.train.max_patches or cfg.model.vision.max_num_patches


def _grad_fn(cfg: ml_collections.ConfigDict):
  """(grad function, params, one-example batch) for counting, with remat off and XLA attention."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.model.remat, cfg.model.attention = "none", "xla"
  if cfg.loss.contrastive == "sigmoid_ring":  # the same products; the ring only reorders them
    cfg.loss.contrastive = "sigmoid"
  graphdef, params = _abstract(cfg)
  S, L, v = cfg.model.image_size, cfg.model.text.context_length, cfg.model.vision
  image = jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32)
  if v.kind == "naflex":  # a full budget of patches (`naflex_budget`)
    n = naflex_budget(cfg)
    image = {"patches": jax.ShapeDtypeStruct((1, n, 3 * v.patch_size**2), jnp.float32),
             "shapes": jax.ShapeDtypeStruct((1, 2), jnp.int32), "mask": jax.ShapeDtypeStruct((1, n), jnp.bool_)}
  batch = {"image": image, "text": jax.ShapeDtypeStruct((1, L), jnp.int32)}

  def loss(p, b):
    out = nnx.merge(graphdef, p)(b["image"], b["text"], train=True, rng=jax.random.key(0))
    return losses.composite(out, b, cfg.loss)[0]
  return jax.grad(loss), params, batch


def _dot_flops(jaxpr: jax_core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      contract_lhs = eqn.params["dimension_numbers"][0][0]
      k = math.prod(eqn.invars[0].aval.shape[d] for d in contract_lhs)
      total += 2 * k * math.prod(eqn.outvars[0].aval.shape)
    for sub in jax_core.jaxprs_in_params(eqn.params):
      n = _dot_flops(sub)
      total += n * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
  return total


def _live(jaxpr: jax_core.Jaxpr) -> jax_core.Jaxpr:
  """`jaxpr` without the equations no output depends on, which XLA drops from the compiled step
  too (CoCa's full caption logits, say, when the loss projects chunk by chunk)."""
  try:
    from jax._src.interpreters import partial_eval as pe  # noqa: PLC0415 -- no public DCE yet
    return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]
  except (ImportError, AttributeError, TypeError):  # a jax without it: count everything
    return jaxpr


def train_flops_per_example(cfg: ml_collections.ConfigDict) -> float:
  """Matmul FLOPs of forward + backward for one example (see the module docstring)."""
  grad, params, batch = _grad_fn(cfg)
  return float(_dot_flops(_live(jax.make_jaxpr(grad)(params, batch).jaxpr)))


def xla_flops_per_example(cfg: ml_collections.ConfigDict) -> float:
  """FLOPs of forward + backward for one example as XLA's cost analysis counts them (lowered, not compiled)."""
  grad, params, batch = _grad_fn(cfg)
  cost = jax.jit(grad).lower(params, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else float("nan")  # nan: a backend with no count


def patch_dropout(cfg: ml_collections.ConfigDict) -> float:
  """`model.vision.patch_dropout`, or 0.0 for a vision encoder that has no such setting."""
  return cfg.model.vision.patch_dropout if "patch_dropout" in cfg.model.vision else 0.0


def train_flops(cfg: ml_collections.ConfigDict) -> dict:
  """{"train_flops_per_example": the count with patch dropout in effect (what a step computes, MFU's
  basis)}, and with patch dropout also the count without it (`..._no_patch_dropout`), the dropout
  and the patches kept of all (`kept_patches`: [K, N]). NaFlex: the count is at `naflex_budget`
  patches per image (`vlmjax info --config.data.train.max_patches=N` counts at N), and
  `train_flops_per_budget` holds the count at each of `data.train.budgets` (empty without). Counted
  unpacked: packed rows (`data.train.pack`) attend over their whole length, which costs more attention."""
  out = {"train_flops_per_example": train_flops_per_example(cfg)}
  if naflex_budget(cfg) is not None:  # NaFlex: at the run's budget, and at each budget drawn per batch
    out["naflex_budget"] = naflex_budget(cfg)
    at = lambda n: ml_collections.ConfigDict({**cfg.to_dict(), "data": {**cfg.data.to_dict(), "train": {
        **cfg.data.train.to_dict(), "max_patches": n}}})
    out["train_flops_per_budget"] = {str(n): train_flops_per_example(at(n)) for n in cfg.data.train.budgets}
  p = patch_dropout(cfg)
  if p > 0:
    full = ml_collections.ConfigDict(cfg.to_dict())
    full.model.vision.patch_dropout = 0.0
    n = (cfg.model.image_size // cfg.model.vision.patch_size) ** 2
    out.update(train_flops_per_example_no_patch_dropout=train_flops_per_example(full), patch_dropout=p,
               kept_patches=[kept_patches(n, p), n])
  return out
