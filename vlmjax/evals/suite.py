"""The evaluators of one run, prepared once and run when due.

`prepare_all(cfg, mesh)` checks every evaluator config and prepares each (its data read and
checked, class names, prompts) against one `data.Context` built from the config, before
anything trains; the train loop keeps the `Suite` and calls `suite.run` at every evaluation,
so nothing is re-validated, no shard is reopened and no tokenizer rebuilt.
"""

from __future__ import annotations

import time

import jax
import ml_collections

from vlmjax import sharding
from vlmjax.evals import common, data, registry


class Suite:
  """Prepared evaluators by name, and the schedule they run on."""

  def __init__(self, evals: ml_collections.ConfigDict, eval_every: int, prepared: dict):
    self.evals, self.eval_every, self.prepared = evals, eval_every, prepared
    self.outputs: dict[str, list[dict]] = {}  # of the last `run`: rows an evaluator keeps (captions)
    self.tables: dict[str, str] = {}  # of the last `run`: file name -> text (a benchmark suite's table)

  def due(self, step: int, final: bool = False) -> list[str]:
    return common.due(self.evals, step, final, self.eval_every)

  def run(self, graphdef, params, *, step: int, final: bool = False, ema=None) -> dict[str, float]:
    """{"eval/<name>/<metric>": value, "eval/<name>/seconds": s} for the evaluators due at `step`
    (every one when `final`); `params` as sharded for training, and `ema`, their moving average
    (`optim.ema_params`), for the evaluators with `params="ema"`."""
    out, self.outputs, self.tables = {}, {}, {}
    for name in self.due(step, final):
      weights = {"params": params, "ema": ema}[self.evals[name].params]
      if weights is None:
        raise ValueError(f"evals.{name} evaluates {self.evals[name].params!r}, which Suite.run was not given")
      start = time.perf_counter()
      metrics = self.prepared[name].evaluate(graphdef, weights)
      out.update({f"eval/{name}/{k}": float(v) for k, v in metrics.items()})
      out[f"eval/{name}/seconds"] = time.perf_counter() - start
      rows = getattr(self.prepared[name], "outputs", None)  # optional: what the evaluator produced
      if rows:
        self.outputs[name] = rows
      self.tables.update(getattr(self.prepared[name], "tables", None) or {})
    return out


def prepare_all(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Suite:
  """A one-line error for the first evaluator of `cfg.evals` that cannot run: a malformed config, or
  anything checkable without a trained model (the source and its size, class names, templates,
  batch size over `mesh`'s shards (default: `cfg.mesh` on this machine's devices), the model's
  methods, the tokenizer). Otherwise the prepared suite."""
  for name in cfg.evals.keys():
    registry.validate(name, cfg.evals[name])
  common.check_ema(cfg)
  prepared = {}
  if cfg.evals:
    mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh)
    ctx = data.context(cfg, mesh)
    for name in cfg.evals.keys():
      ev = cfg.evals[name]
      prepared[name] = registry.EVALUATORS[ev.type].prepare(name, ev, ctx)
  return Suite(cfg.evals, cfg.eval_every, prepared)
