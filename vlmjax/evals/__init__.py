"""Evaluation: zero-shot classification, image-text retrieval, captioning, few-shot linear probes, and any
evaluator registered in `registry.EVALUATORS` (the protocol is in `registry.py`).

`prepare_all(cfg, mesh)` -> a `Suite` (suite.py): every evaluator of `cfg.evals` checked and
prepared once; `suite.due(step, final)` names the ones due; `suite.run(graphdef, params, step=...)`
runs them and returns {"eval/<name>/<metric>": value}. Build evaluator configs with
`vlmjax.evals.defaults`. This package's top level stays light (no jax import) so that
`vlmjax --help` is fast: `prepare_all` loads `suite.py` when first used.
"""

from __future__ import annotations


def prepare_all(cfg, mesh=None):
  """See `suite.prepare_all`."""
  from vlmjax.evals.suite import prepare_all as prepare  # noqa: PLC0415
  return prepare(cfg, mesh)


__all__ = ["prepare_all"]
