"""Evaluation: zero-shot classification, image-text retrieval, captioning.

`run_all(cfg, graphdef, params, mesh, step=...)` runs the evaluators of
`cfg.evals` due at `step` and returns {"eval/<name>/<metric>": value}. Build
evaluator configs with `vlmjax.evals.defaults`. This package's top level stays
light (no jax import) so that `vlmjax --help` is fast.
"""

from __future__ import annotations

from vlmjax.evals.defaults import due, validate


def validate_all(cfg, mesh=None) -> None:
  """A one-line ConfigError for the first evaluator of `cfg.evals` that cannot run: a malformed
  config, or anything checkable without a trained model (the source and its size, class names,
  templates, batch size over `mesh`'s shards (default: `cfg.mesh` on this machine's devices),
  the model's methods, the tokenizer). Run before training, not when the evaluator is first due."""
  for name in cfg.evals.keys():
    validate(name, cfg.evals[name])
  if not cfg.evals:
    return
  from vlmjax import sharding  # noqa: PLC0415
  from vlmjax.evals import runner  # noqa: PLC0415
  mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
  for name in cfg.evals.keys():
    runner.PREPARE[cfg.evals[name].type](name, cfg.evals[name], cfg, mesh)


def run_all(cfg, graphdef, params, mesh, *, step: int, final: bool = False) -> dict[str, float]:
  """Runs the evaluators due at `step` (every one when `final`), sharded over `mesh`."""
  from vlmjax.evals.runner import run_all as run  # noqa: PLC0415
  return run(cfg, graphdef, params, mesh, step=step, final=final)


__all__ = ["due", "run_all", "validate_all"]
