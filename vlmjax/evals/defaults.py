"""Evaluator configs for `cfg.evals.<name>`, one builder per registered type (no jax imported):

    c.evals.shapes_zs = defaults.zero_shot("synthetic:shapes:validation", num_examples=512)

`defaults.<type>(source, **options)` is that evaluator's `config` (see `registry.py`): a complete
ConfigDict, every field present, so `--config.evals.<name>.<field>=v` overrides work and nothing
is read with a silent default. Common fields are described in `common.py`.
"""

from __future__ import annotations


def __getattr__(type_: str):
  if type_.startswith("__"):
    raise AttributeError(type_)
  from vlmjax.evals.registry import EVALUATORS  # noqa: PLC0415
  if type_ not in EVALUATORS:
    raise AttributeError(f"no evaluator type {type_!r}; registered: {', '.join(EVALUATORS)}")
  return EVALUATORS[type_].config
