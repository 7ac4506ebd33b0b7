"""The train state and everything static about a run, from a config: built, initialised or restored.

`TrainState` is what a checkpoint holds. `setup` builds the model abstractly (no allocation) and
derives the optimiser and every array's sharding; `init_state` initialises into those shardings
(from `init_from` where asked: converted weights, or a run's step, `init_source`; learned position
embeddings of another size resized by `models.posemb`); `restore_or_init` resumes a workdir's latest
checkpoint (resharded onto this run's mesh) or initialises; `restore_params` reads one checkpoint's
parameters for evaluation (`restore_trees`: and/or their EMA, `optim.ema_decay`). The train loop
(`train.py`) and the evaluators build on these.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from vlmjax import checkpoint, convert, errors, models, optim, sharding
from vlmjax.data import tokenizers
from vlmjax.convert.params import flatten, unflatten_like
from vlmjax.models import posemb

@flax.struct.dataclass
class TrainState:
  step: jax.Array   # int32 scalar: number of updates applied
  params: Any       # pure dict of float32 arrays (nnx.to_pure_dict of the model's state)
  opt_state: Any    # optax state over `params`


class Setup(NamedTuple):
  """Everything static about a run: model structure, optimiser, abstract state and shardings."""
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: TrainState      # ShapeDtypeStructs
  state_shardings: TrainState     # NamedShardings
  batch_sharding: jax.sharding.NamedSharding
  mesh: jax.sharding.Mesh


def setup(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Builds the model abstractly (no allocation) and derives the state's shardings."""
  models.check(cfg.model)
  try:
    abstract_model = models.abstract(cfg.model)
  except ValueError as e:
    raise errors.ConfigError(f"model config: {e}") from None
  except (AttributeError, KeyError) as e:  # ml_collections reports a missing field as AttributeError
    missing = re.search(r"'(\w+)'", str(e))
    raise errors.ConfigError(f"model config has no key {missing.group(1) if missing else str(e)!r}; a config.json "
                             "written by an older vlmjax lacks keys added since (see the config reference)") from None
  graphdef, abstract_params = nnx.split(abstract_model)
  optim.check_prefixes(nnx.to_pure_dict(abstract_params), cfg.optim.freeze, "optim.freeze")
  optim.check_prefixes(nnx.to_pure_dict(abstract_params), ",".join(optim.lr_multipliers(cfg.optim.lr_mult)),
                       "optim.lr_mult")
  optim.check_prefixes(nnx.to_pure_dict(abstract_params), cfg.init_reinit, "init_reinit")
  param_sh = sharding.param_shardings(abstract_params, cfg.mesh.rules, mesh)
  tx, schedule = optim.build(cfg.optim, cfg.total_steps, models.param_constraint(cfg.model))
  params = nnx.to_pure_dict(abstract_params)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
  replicated = sharding.replicated(mesh)
  frozen = lambda x: isinstance(x, optax.MaskedNode)  # optim.freeze: no optimiser state for these
  opt_sh = optax.tree_map_params(tx, lambda v, s: v if frozen(v) else s, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: replicated, is_leaf=frozen)
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
  return Setup(graphdef, tx, schedule, abstract, shardings,
               sharding.batch_sharding(mesh, cfg.mesh.rules), mesh)


def init_state(cfg: ml_collections.ConfigDict, s: Setup) -> TrainState:
  """Initialises parameters and optimiser state directly into their shardings.

  With `cfg.init_from`, parameters come from those weights (`init_source`), except the path prefixes
  in `cfg.init_reinit`, which keep their fresh initialisation.
  """
  def init(loaded) -> TrainState:
    model = models.build(cfg.model, nnx.Rngs(cfg.seed))
    params = nnx.to_pure_dict(nnx.state(model))
    if loaded is not None:
      fresh = optim.prefixes(cfg.init_reinit)
      params = jax.tree_util.tree_map_with_path(
          lambda path, new, old: new if optim.matches(optim.path_name(path), fresh) else old, params, loaded)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))
  loaded = load_init(cfg, s) if cfg.init_from else None
  return jax.jit(init, out_shardings=s.state_shardings)(loaded)


class InitSource(NamedTuple):
  """Where `init_from` points: converted weights (`step` None) or a step of a training run's workdir."""
  directory: str
  step: int | None

  @property
  def item(self) -> str:
    """The orbax item holding the parameters (a run's: its whole state, of which only params are read)."""
    if self.step is None:
      return convert.params_dir(self.directory)
    return os.path.join(self.directory, "checkpoints", str(self.step), "state")

  def __str__(self) -> str:
    return self.directory if self.step is None else f"{self.directory} step {self.step}"


def init_source(init_from: str) -> InitSource:
  """`init_from` resolved: DIR (a `vlmjax convert --out` directory), RUN (a training run's workdir: its
  latest checkpoint) or RUN:STEP (that step). One-line ConfigErrors for a missing step or a path that
  is neither."""
  directory, step = init_from, None
  match = re.fullmatch(r"(.+):(\d+)", init_from)
  if not os.path.isdir(init_from) and match:
    directory, step = match.group(1), int(match.group(2))
  if not os.path.isdir(directory):
    raise errors.ConfigError(f"init_from={init_from!r} does not exist (expected a `vlmjax convert --out` "
                             "directory, a training run's workdir RUN, or RUN:STEP)")
  if not os.path.isdir(os.path.join(directory, "checkpoints")):
    if step is not None:
      raise errors.ConfigError(f"init_from={init_from!r}: {directory} is not a training run's workdir (no "
                               "checkpoints/), so it has no steps; converted weights are named without ':STEP'")
    if not os.path.isdir(os.path.join(directory, convert.PARAMS_DIR)) and not os.path.isfile(
        os.path.join(directory, "_METADATA")):
      raise errors.ConfigError(f"init_from={init_from!r} is neither a `vlmjax convert --out` directory (no "
                               "params/) nor a training run's workdir (no checkpoints/)")
    return InitSource(os.path.abspath(directory), None)
  steps = sorted(int(n) for n in os.listdir(os.path.join(directory, "checkpoints")) if n.isdigit()
                 and os.path.isdir(os.path.join(directory, "checkpoints", n, "state")))
  if not steps:
    raise errors.ConfigError(f"init_from={init_from!r}: the run in {directory} has no checkpoint yet")
  if step is not None and step not in steps:
    raise errors.ConfigError(f"init_from={init_from!r}: no checkpoint at step {step} in {directory}; "
                             f"available: {', '.join(map(str, steps))}")
  return InitSource(os.path.abspath(directory), steps[-1] if step is None else step)


def check_init(cfg: ml_collections.ConfigDict, s: Setup) -> None:
  """`init_from` checked without loading it (its tokenizer, its tensors' names and shapes): a one-line
  ConfigError before a fresh run touches its workdir. Learned position embeddings of another size are
  resized (`models.posemb`); every other parameter must match exactly."""
  if cfg.init_from:
    _check_init(cfg, s)


def _check_init(cfg: ml_collections.ConfigDict, s: Setup) -> tuple[InitSource, list]:
  """(where `init_from` points, the position embeddings to resize: `posemb.Resize`s)."""
  source = init_source(cfg.init_from)
  check_init_tokenizer(cfg, source)
  check_init_normalize(cfg, source)
  checkpoint.quiet_libraries(True)  # orbax's absl warnings about a step's own metadata go to log.txt
  try:
    stored = convert.stored_shapes(source.item)
  except Exception as e:  # noqa: BLE001 -- orbax raises many types; one line
    raise errors.ConfigError(f"cannot read init_from={cfg.init_from!r}: {_reason(e, source.item)}") from None
  finally:
    checkpoint.quiet_libraries(False)
  if source.step is not None:  # a run's state: {step, params, opt_state}
    stored = {k.removeprefix("params."): v for k, v in stored.items() if k.startswith("params.")}
  where = f"init checkpoint {source.item!r}"
  wanted = {k: tuple(v.shape) for k, v in flatten(s.abstract_state.params).items()}
  resizes = posemb.plan(cfg.model, wanted, stored, where)
  convert.compare_shapes(where, stored, s.abstract_state.params, skip=posemb.layouts(cfg.model))
  return source, resizes


def load_init(cfg: ml_collections.ConfigDict, s: Setup):
  """The parameters `init_from` names, onto this run's shardings, position embeddings of another size
  resized (`models.posemb`; one line printed each)."""
  source, resizes = _check_init(cfg, s)
  abstract = checkpoint.abstract_with_shardings(s.abstract_state.params, s.state_shardings.params)
  flat = flatten(abstract)
  for r in resizes:  # read at the stored shape, whole on every device, and resized on the host
    flat[r.key] = jax.ShapeDtypeStruct(r.old, flat[r.key].dtype, sharding=sharding.replicated(s.mesh))
  target = unflatten_like(abstract, flat)
  if source.step is None:
    loaded = convert.load_params(source.directory, target)
  else:
    ckpt = checkpoint.Checkpointer(os.path.join(source.directory, "checkpoints"), cfg)
    try:
      loaded = ckpt.restore_part({"params": target}, source.step)["params"]
    finally:
      ckpt.close()
  flat = flatten(loaded)
  out_sh = flatten(s.state_shardings.params)
  for r in resizes:
    new = r.apply(np.asarray(jax.device_get(flat[r.key]))).astype(flat[r.key].dtype)
    flat[r.key] = jax.make_array_from_callback(new.shape, out_sh[r.key], lambda index, a=new: a[index])
    if not optim.matches(r.key, optim.prefixes(cfg.init_reinit)):  # else it is initialised afresh
      print(r.describe())
  print(f"initialised from {source}" + (f" (fresh: {cfg.init_reinit})" if cfg.init_reinit else ""))
  return unflatten_like(abstract, flat)


def check_init_tokenizer(cfg: ml_collections.ConfigDict, source: InitSource | None = None) -> None:
  """Weights converted with their tokenizer (`INIT_FROM/tokenizer.json`) mean nothing with other token
  ids: a one-line ConfigError unless `data.train.tokenizer` is that file, or the token embedding is
  re-initialised (`init_reinit`)."""
  directory = (source or init_source(cfg.init_from)).directory
  path = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(path) or optim.matches("text.token_embed.embedding", optim.prefixes(cfg.init_reinit)):
    return
  if not tokenizers.reads_hf_file(cfg.data.train.tokenizer, path):
    raise errors.ConfigError(f"init_from={cfg.init_from!r} was converted with its tokenizer; train with "
                             f"--config.data.train.tokenizer={converted_tokenizer(directory, path)} "
                             f"(data.train.tokenizer is "
                             f"{cfg.data.train.tokenizer!r}), or re-initialise text.token_embed in init_reinit")


def check_init_normalize(cfg: ml_collections.ConfigDict, source: InitSource) -> None:
  """Weights trained (or converted) on pixels normalised one way see shifted inputs the other way: a one-line
  ConfigError when `init_from`'s config.json has another `data.train.normalize` (absent: clip, as before)."""
  path = os.path.join(source.directory, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    theirs = json.load(f).get("data", {}).get("train", {}).get("normalize", "clip")
  if theirs != cfg.data.train.normalize:
    raise errors.ConfigError(f"init_from={cfg.init_from!r} was trained on pixels normalised as data.train.normalize="
                             f"{theirs!r}, and this run uses {cfg.data.train.normalize!r}; set "
                             f"--config.data.train.normalize={theirs}")


def restore_or_init(cfg: ml_collections.ConfigDict, s: Setup, ckpt: checkpoint.Checkpointer,
                    data) -> TrainState:
  """The latest checkpoint that can be read, resharded onto this run's mesh, or a fresh
  initialisation; the data iterator `data` (`pipeline.Batches`) is moved to the checkpoint's position.

  Steps that cannot be read (a truncated array file, a missing manifest) are tried newest first and
  moved aside to WORKDIR/checkpoints.corrupt/ (never deleted) once an earlier step restores, one
  warning line each. If none restores, they are moved aside and the run starts afresh, unless a
  step's error says its shapes or tree differ from this run's (a setup the resume checks did not
  catch): then one CheckpointError, nothing moved. Our own checks' UserErrors pass as they are. With
  several processes each verdict is agreed on first (`_agreed`)."""
  abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
  steps = ckpt.steps()
  if not steps:
    return init_state(cfg, s)
  unreadable: list[tuple[int, str]] = []
  for step in steps:
    state = _agreed(_restore_step(ckpt, abstract, step, data))
    if isinstance(state, str):
      unreadable.append((step, state))
      continue
    _set_aside(ckpt, unreadable, f"resuming from step {step}")
    return state
  if any(re.search(OTHER_SETUP, reason) for _, reason in unreadable):
    step, reason = unreadable[0]
    raise errors.CheckpointError(
        f"cannot resume from {os.path.join(ckpt.directory, str(step))}: {reason}; no step "
        f"({', '.join(str(n) for n, _ in unreadable)}) fits this run's model and optimiser: resume with the "
        "settings they were saved with, or use a new --workdir")
  _set_aside(ckpt, unreadable, "starting afresh")
  return init_state(cfg, s)


def _agreed(restored):
  """`restored` (a state, or why this process could not read it) as all processes see it: a damaged file
  may be read by one process only, so a step counts as read only where every process read it, and a
  state of another setup (OTHER_SETUP) on one process is one on all."""
  if jax.process_count() == 1:
    return restored
  verdict = 0 if not isinstance(restored, str) else 2 if re.search(OTHER_SETUP, restored) else 1
  verdicts = np.asarray(multihost_utils.process_allgather(np.int32(verdict))).reshape(-1)
  if not verdicts.any():
    return restored
  if isinstance(restored, str):
    return restored
  bad = [str(i) for i, v in enumerate(verdicts) if v]
  kind = "saved by another setup" if verdicts.max() == 2 else "unreadable"
  return f"{kind} on process {', '.join(bad)} (its log says why)"


# The errors of a checkpoint that is whole but of another model or optimiser (shapes, tree structure).
OTHER_SETUP = r"is not compatible with the stored shape|tree structures do not match|Requested shape|another setup"


def _restore_step(ckpt: checkpoint.Checkpointer, abstract, step: int, data):
  """The state at `step` (the data iterator moved to its position), or, if it cannot be read, the
  reason in one line."""
  try:
    state, data_state = ckpt.restore(abstract, step)
    data.set_state(data_state)
    return state
  except errors.UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- orbax, tensorstore and grain raise many types; one line
    reason = _reason(e, os.path.join(ckpt.directory, str(step)))
  return reason


def _reason(e: Exception, folder: str) -> str:
  """A library error in one short line: tensorstore's driver prefixes, its spec and the step's own
  folder (`folder`, named by the line already) dropped."""
  text = str(e).strip().split("\n")[0].replace(folder + os.sep, "")
  text = re.sub(r'Error opening "\w+" driver: | in OCDBT database at local file "[^"]*"|\s*\[tensorstore_spec.*|\.? See full TensorStore details.*', "", text)
  return f"{type(e).__name__}: {text[:300]}"


def _set_aside(ckpt: checkpoint.Checkpointer, unreadable: list[tuple[int, str]], then: str) -> None:
  """Moves the unreadable steps aside (`restore_or_init`), one warning line each (the primary's)."""
  for step, reason in unreadable:
    path = ckpt.set_aside(step)
    if jax.process_index() == 0:
      print(f"checkpoint step {step} is unreadable ({reason}); moved to {path}; {then}", file=sys.stderr, flush=True)


def converted_tokenizer(init_from: str, path: str) -> str:
  """The tokenizer spec `vlmjax convert` recorded in INIT_FROM/config.json (`hf:PATH` if none)."""
  from vlmjax import workdir
  try:
    spec = workdir.read_config_file(os.path.join(init_from, "config.json")).data.train.tokenizer
  except (errors.ConfigError, AttributeError):
    spec = ""
  return spec if tokenizers.reads_hf_file(spec, path) else f"hf:{path}"


def restore_params(workdir: str, cfg: ml_collections.ConfigDict, step: int | None):
  """(setup, params, step) from the checkpoint at `step` (latest if None) of `workdir`."""
  s, trees, step = restore_trees(workdir, cfg, step, ("params",))
  return s, trees["params"], step


def restore_trees(workdir: str, cfg: ml_collections.ConfigDict, step: int | None, names):
  """(setup, {name: tree}, step) from the checkpoint at `step` (latest if None) of `workdir`, for each of
  `names`: "params" (the parameters) and "ema" (their moving average, `optim.ema_params`; kept by runs
  with optim.ema_decay > 0). Nothing else is read."""
  s = setup(cfg, sharding.make_mesh(cfg.mesh))
  abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")) and os.path.isdir(os.path.join(workdir, "params")):
    if step not in (None, 0):
      raise errors.CheckpointError(f"{workdir} holds converted weights only (step 0), not step {step}")
    if "ema" in names:
      raise errors.CheckpointError(f"{workdir} holds converted weights only, no EMA of the parameters; "
                                   "evaluate them with params='params'")
    return s, {"params": convert.load_params(workdir, abstract.params)}, 0
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
  steps = ckpt.manager.all_steps()
  if not steps or (step is not None and step not in steps):
    ckpt.close()
    raise errors.CheckpointError(f"no checkpoint at step {step if step is not None else '(any)'} in {workdir}; "
                      f"available: {sorted(steps) or 'none'}")
  step = max(steps) if step is None else step
  item = {"params": abstract.params} if "params" in names else {}
  if "ema" in names:
    if optim.ema_params(abstract.opt_state) is None:
      ckpt.close()
      raise errors.ConfigError("the EMA of the parameters is asked for, and optim.ema_decay is 0 (none kept)")
    item["opt_state"] = {"ema": optim.ema_params(abstract.opt_state)}  # `optim.with_ema` is outermost
  try:
    out = ckpt.restore_part(item, step)
  except Exception as e:  # noqa: BLE001 -- orbax raises many types; one line
    if "ema" not in names:
      raise
    raise errors.CheckpointError(f"cannot read the EMA of the parameters at step {step} of {workdir} (was it "
                                 f"trained with optim.ema_decay > 0?): {_reason(e, workdir)}") from None
  finally:
    ckpt.close()
  trees = {"params": out.get("params"), "ema": out.get("opt_state", {}).get("ema")}
  return s, {name: trees[name] for name in names}, step
