"""Runs configured evaluators: inside the train loop (`run_all`) and on a restored checkpoint (`evaluate_workdir`)."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from vlmjax.evals import captioning, defaults, retrieval, zero_shot

EVALUATORS = {"zero_shot": zero_shot.evaluate, "retrieval": retrieval.evaluate, "captioning": captioning.evaluate}
PREPARE = {"zero_shot": zero_shot.prepare, "retrieval": retrieval.prepare, "captioning": captioning.prepare}


def run_all(cfg: ml_collections.ConfigDict, graphdef, params, mesh: jax.sharding.Mesh, *, step: int,
            final: bool = False) -> dict[str, float]:
  """{"eval/<name>/<metric>": value} for the evaluators due at `step`; params as sharded for training."""
  out = {}
  for name in defaults.due(cfg.evals, step, final, cfg.eval_every):
    ev = cfg.evals[name]
    defaults.validate(name, ev)
    start = time.perf_counter()
    metrics = EVALUATORS[ev.type](name, ev, cfg, graphdef, params, mesh)
    out.update({f"eval/{name}/{k}": float(v) for k, v in metrics.items()})
    out[f"eval/{name}/seconds"] = time.perf_counter() - start
  return out


def restore(workdir: str, cfg: ml_collections.ConfigDict, step: int | None):
  """(setup, params, step) from the checkpoint at `step` (latest if None) of `workdir`."""
  from vlmjax import checkpoint, sharding, train  # noqa: PLC0415
  from vlmjax.errors import ConfigError  # noqa: PLC0415
  s = train.setup(cfg, sharding.make_mesh(cfg.mesh))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) and os.path.isdir(os.path.join(workdir, "params")):
    from vlmjax import convert  # noqa: PLC0415  (a `vlmjax convert --out` directory: step 0)
    if step not in (None, 0):
      raise ConfigError(f"{workdir} holds converted weights only (step 0), not step {step}")
    return s, convert.load_params(workdir, checkpoint.abstract_with_shardings(
        s.abstract_state.params, s.state_shardings.params)), 0
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
  steps = ckpt.manager.all_steps()
  if not steps or (step is not None and step not in steps):
    ckpt.close()
    raise ConfigError(f"no checkpoint at step {step if step is not None else '(any)'} in {workdir}; "
                      f"available: {sorted(steps) or 'none'}")
  step = max(steps) if step is None else step
  params = ckpt.restore_params(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings), step)
  ckpt.close()
  return s, params, step


def load_workdir_config(workdir: str, overrides) -> ml_collections.ConfigDict:
  """The resolved config a run wrote (`config.json`), with `--config.*` overrides applied."""
  from vlmjax import config, errors  # noqa: PLC0415
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise errors.ConfigError(f"{path} does not exist; is {workdir!r} a vlmjax workdir?")
  try:
    with open(path) as f:
      cfg = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f"cannot read {path}: {errors.one_line(e)}; running the training "
                             "command on this workdir again rewrites it") from None
  add_stored_defaults(cfg)
  apply_overrides(cfg, overrides)
  config.validate(cfg)
  for name in cfg.evals.keys():
    defaults.validate(name, cfg.evals[name])
  return cfg


def apply_overrides(cfg: ml_collections.ConfigDict, overrides, where: str = "override") -> None:
  """`--config.KEY=V` overrides as `vlmjax eval` takes them: `evals.NAME=TYPE:SOURCE` adds an
  evaluator NAME that `cfg` lacks; any other key must exist."""
  from vlmjax import config  # noqa: PLC0415
  for key, raw in overrides:
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "evals" and parts[1] not in cfg.evals:
      cfg.evals[parts[1]] = new_evaluator(parts[1], raw)
    else:
      config.apply_override(cfg, key, raw, where)


# Fields added after a workdir's config.json may have been written, with the value that reproduces
# what that older vlmjax did (not always today's default).
OLD_BEHAVIOUR = {"model.text.pad_id": 0, "optim.lr_mult": ""}
OLD_EVALUATOR_BEHAVIOUR = {"image_mode": "resize"}  # evaluators resized whole images before center_crop


def add_stored_defaults(cfg: ml_collections.ConfigDict) -> None:
  """Brings a config.json written by an older vlmjax up to date, so old workdirs stay evaluable:
  keys added since get the value that keeps their old behaviour, evaluators the fields their type
  has gained. Anything else malformed is left to `validate`."""
  from vlmjax import config  # noqa: PLC0415
  fresh = config.base(batch_size=1, total_steps=1)
  for key in fresh.keys():
    if key not in cfg:
      cfg[key] = fresh[key]
  for dotted, value in OLD_BEHAVIOUR.items():
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
      node = node[part] if isinstance(node, ml_collections.ConfigDict) and part in node else None
    if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
      node[leaf] = value
  if "evals" in cfg:
    for name in cfg.evals.keys():
      add_new_fields(cfg.evals[name], OLD_EVALUATOR_BEHAVIOUR)


def add_new_fields(ev: ml_collections.ConfigDict, old_behaviour: dict | None = None) -> None:
  """Gives an evaluator the fields its type has gained since it was stored: `old_behaviour`'s value
  where given, else the type's default."""
  if isinstance(ev, ml_collections.ConfigDict) and "type" in ev and ev.type in defaults.TYPES:
    fresh = getattr(defaults, ev.type)("")
    for key in fresh.keys():
      if key not in ev:
        ev[key] = (old_behaviour or {}).get(key, fresh[key])


def new_evaluator(name: str, raw: str) -> ml_collections.ConfigDict:
  """`--config.evals.NAME=TYPE:SOURCE` adds an evaluator with the defaults of its type."""
  from vlmjax.errors import ConfigError  # noqa: PLC0415
  type_, _, source = raw.partition(":")
  if type_ not in defaults.TYPES or not source:
    raise ConfigError(f"--config.evals.{name}={raw!r}: a new evaluator is TYPE:SOURCE with TYPE one of "
                      f"{', '.join(defaults.TYPES)}, e.g. zero_shot:synthetic:shapes:validation")
  return getattr(defaults, type_)(source)


def evaluate_workdir(workdir: str, overrides=(), step: int | None = None) -> tuple[int, dict[str, float], str]:
  """Runs every evaluator on a checkpoint; writes `<workdir>/eval/<step>.json`. Returns (step, metrics, path)."""
  from vlmjax.errors import ConfigError  # noqa: PLC0415
  cfg = load_workdir_config(workdir, overrides)
  if not cfg.evals:
    raise ConfigError(f"{workdir}/config.json defines no evaluators (cfg.evals is empty)")
  s, params, step = restore(workdir, cfg, step)
  metrics = run_all(cfg, s.graphdef, params, s.mesh, step=step, final=True)
  path = os.path.join(workdir, "eval", f"{step}.json")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump({"step": step, **metrics}, f, indent=2, sort_keys=True)
      f.write("\n")
  return step, metrics, path
