"""Model families: `build(cfg.model, rngs)` picks one by `cfg.model.name`; `abstract` builds it without
allocating. The towers inside a family come from `encoders.py` (by `model.vision.kind` / `model.text.kind`)."""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vlmjax.models.captioner import Captioner
from vlmjax.models.coca import CoCa
from vlmjax.models.output import Output
from vlmjax.models.siglip2 import SigLIP2
from vlmjax.models.two_tower import TwoTower
from vlmjax.errors import ConfigError
from vlmjax.registry import Registry

# Model families by `model.name`: each is built as `Family(cfg.model, rngs=rngs)` and returns an `Output`.
REGISTRY = Registry("model.name", {"coca": CoCa, "two_tower": TwoTower, "captioner": Captioner,
                                    "siglip2": SigLIP2})
# Batch keys besides image and text that a family's forward pass takes as keyword arguments in training
# (LocCa's task sequences: `vlmjax.data.locca`); a batch has them only when the data config asks.
EXTRA_INPUTS = ("decoder_text",)


def extra_inputs(batch: dict) -> dict:
  """The `EXTRA_INPUTS` present in `batch`, as keyword arguments of the model's `__call__`."""
  return {k: batch[k] for k in EXTRA_INPUTS if k in batch}


def takes_decoder_text(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the family `cfg.name` reads LocCa's task sequences (a decoder over image tokens)."""
  return issubclass(REGISTRY.lookup(cfg.name), Captioner)


def _host_counter_rngs(seed: int) -> nnx.Rngs:
  """`nnx.Rngs(seed)` whose call counters are NumPy scalars, for abstract builds only.

  Tracing a model build with device counters makes each parameter's counter update a
  traced value; flax 0.12 then asks that tracer for its `.sharding`, and jax builds an
  error message costing time linear in the trace: quadratic overall (CoCa-Base took 32 s
  to build abstractly, 1.3 s with host counters). Host counters are mutated in place,
  which is harmless when nothing executes (`eval_shape`) but can race with asynchronous
  dispatch, so never use these Rngs to initialise real parameters.
  """
  rngs = nnx.Rngs(seed)
  for _, stream in nnx.iter_graph(rngs):
    if isinstance(stream, nnx.RngStream):
      stream.count.set_value(np.zeros(stream.count.shape, np.uint32))
  return rngs


def _positive(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


DTYPES = ("float32", "bfloat16", "float16")
# Values no model can use, found before it is built: (key under `model`, test, what is valid). Keys a
# family lacks (a two-tower model has no decoder) are skipped.
RULES = tuple((key, _positive, "an int >= 1") for key in (
    "image_size", "embed_dim", "vision.patch_size", "vision.width", "vision.depth", "vision.heads", "vision.mlp_dim",
    "text.vocab_size", "text.context_length", "text.width", "text.depth", "text.heads", "text.mlp_dim",
    "pooler.width", "pooler.n_queries", "pooler.heads", "decoder.width", "decoder.heads", "decoder.mlp_dim")) + (
    ("decoder.depth", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
    *((f"distill_head.{k}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0")
      for k in ("prototypes", "hidden", "bottleneck")),
    ("dtype", lambda v: v in DTYPES, " | ".join(DTYPES)),
    ("param_dtype", lambda v: v in DTYPES, " | ".join(DTYPES)),
    ("init_logit_scale", lambda v: _finite(v) and v > 0, "a finite number > 0 (the initial exp(t))"),
    ("max_logit_scale", lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0: no clamp)"),
    ("init_logit_bias", lambda v: v is None or _finite(v), "a finite number, or None for no bias"),
    ("vision.patch_dropout", lambda v: _finite(v) and 0 <= v < 1,
     "a number in [0, 1) (the fraction of patch tokens dropped in training)"),
)


def check(cfg: ml_collections.ConfigDict) -> None:
  """A one-line ConfigError for a `model` config value in `RULES` that no model can use."""
  for key, test, what in RULES:
    node, found = cfg, True
    for part in key.split("."):
      found = isinstance(node, ml_collections.ConfigDict) and part in node
      if not found:
        break
      node = node[part]
    if found and not test(node):
      raise ConfigError(f"model.{key}={node!r} must be {what}")


def abstract(cfg: ml_collections.ConfigDict) -> nnx.Module:
  """The model of `cfg` (a `model` config) with ShapeDtypeStructs for parameters: no allocation."""
  return nnx.eval_shape(lambda: build(cfg, _host_counter_rngs(0)))


def build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
  """The model family `cfg.name` (a `model` config), initialised from `rngs`."""
  return REGISTRY.lookup(cfg.name)(cfg, rngs=rngs)


def param_constraint(cfg: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """What the train step applies to the parameters after every update: open_clip's clamp of the
  learned temperature, exp(logit_scale) in [1, `cfg.max_logit_scale`] (100 for CLIP and CoCa; 0:
  none, as SigLIP in big_vision). The parameter itself is clipped, as open_clip does after each
  step, so the loss can pull it back down at once (clipping in the forward pass would zero its
  gradient instead). Models without a learned temperature (CapPa) get the identity."""
  if REGISTRY[cfg.name] is Captioner or not cfg.max_logit_scale:
    return lambda params: params
  top = math.log(cfg.max_logit_scale)
  return lambda params: {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, top)}


__all__ = ["REGISTRY", "EXTRA_INPUTS", "Output", "abstract", "build", "check", "extra_inputs", "param_constraint",
           "takes_decoder_text"]
