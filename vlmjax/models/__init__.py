"""Model registry: `build(cfg.model, rngs)` picks a model family by `cfg.model.name`."""

from __future__ import annotations

import ml_collections
from flax import nnx

from vlmjax.models.coca import CoCa
from vlmjax.models.output import Output
from vlmjax.models.two_tower import TwoTower

REGISTRY = {"coca": CoCa, "two_tower": TwoTower}


def build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
  if cfg.name not in REGISTRY:
    raise ValueError(f"model.name {cfg.name!r} is not one of {', '.join(sorted(REGISTRY))}")
  return REGISTRY[cfg.name](cfg, rngs=rngs)


__all__ = ["REGISTRY", "build", "Output"]
