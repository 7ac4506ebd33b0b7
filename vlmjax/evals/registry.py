"""The evaluators, by `cfg.evals.<name>.type`, and the one protocol they follow.

An evaluator is a module (or any object) with:
  config(source, **options) -> ConfigDict   every field, built on `common.fields` (so that
                                            `--config.evals.<name>.<field>=v` works)
  check(where, ev) -> None                  one-line ConfigError for its own fields out of range
  prepare(name, ev, ctx) -> Prepared        everything but a trained model, done once before
                                            training: the eval set read and checked, class names,
                                            prompts, tokenised texts; `ctx` is `data.Context`
                                            (image size, context length, tokenizer, batch sharding,
                                            model class), not the root config
  Prepared.evaluate(graphdef, params) -> {metric: value}
The suite (`suite.py`) keeps the prepared evaluators for the whole run. To add one: a module
and one line below (or `EVALUATORS.register("mine", mine)` from your own code).
"""

from __future__ import annotations

import ml_collections

from vlmjax import config
from vlmjax.errors import ConfigError
from vlmjax.evals import benchmark, captioning, common, dense_probe, fewshot, refexp, retrieval, zero_shot
from vlmjax.registry import Registry

EVALUATORS = Registry("evals.<name>.type", {"zero_shot": zero_shot, "retrieval": retrieval, "captioning": captioning,
                                            "fewshot": fewshot, "suite": benchmark, "refexp": refexp,
                                            "dense_probe": dense_probe})


def validate(name: str, ev) -> None:
  """One-line ConfigError for a malformed evaluator config."""
  where = f"evals.{name}"
  if not isinstance(ev, ml_collections.ConfigDict) or "type" not in ev:
    raise ConfigError(f"{where} must be a group with a 'type' ({' | '.join(EVALUATORS)}); "
                      f"build it with vlmjax.evals.defaults")
  evaluator = EVALUATORS.lookup(ev.type, f"{where}.type")
  want, keys = set(evaluator.config("x").keys()), set(ev.keys())
  missing, extra = want - keys, keys - want
  if missing or extra:
    raise ConfigError(f"{where} ({ev.type}): missing {sorted(missing)}, unknown {sorted(extra)}; "
                      f"valid keys: {', '.join(sorted(want))}")
  common.check(where, ev)
  evaluator.check(where, ev)


def new_evaluator(name: str, raw: str) -> ml_collections.ConfigDict:
  """`--config.evals.NAME=TYPE:SOURCE` adds an evaluator with the defaults of its type."""
  type_, _, source = raw.partition(":")
  if type_ not in EVALUATORS or not source:
    raise ConfigError(f"--config.evals.{name}={raw!r}: a new evaluator is TYPE:SOURCE with TYPE one of "
                      f"{', '.join(EVALUATORS)}, e.g. zero_shot:synthetic:shapes:validation")
  return EVALUATORS[type_].config(source)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides, where: str = "override") -> None:
  """`--config.KEY=V` overrides as `vlmjax eval` takes them: `evals.NAME=TYPE:SOURCE` adds an
  evaluator NAME that `cfg` lacks; any other key must exist."""
  for key, raw in overrides:
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "evals" and parts[1] not in cfg.evals:
      cfg.evals[parts[1]] = new_evaluator(parts[1], raw)
    else:
      config.apply_override(cfg, key, raw, where)


# evaluators resized whole images before center_crop; zero-shot counted same-named classes as one
OLD_BEHAVIOUR = {"image_mode": "resize", "merge_same_names": True}


def add_new_fields(cfg: ml_collections.ConfigDict) -> None:
  """Gives the evaluators of a config.json written by an older vlmjax the fields their type has gained
  since: the value that keeps their old behaviour (`OLD_BEHAVIOUR`), else the type's default."""
  for name in cfg.evals.keys() if "evals" in cfg else ():
    ev = cfg.evals[name]
    if isinstance(ev, ml_collections.ConfigDict) and "type" in ev and ev.type in EVALUATORS:
      fresh = EVALUATORS[ev.type].config("")
      for key in fresh.keys():
        if key not in ev:
          ev[key] = OLD_BEHAVIOUR.get(key, fresh[key])
