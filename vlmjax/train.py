"""Training: the train state, the pure train step, and the loop.

Read top to bottom: `TrainState` is what a checkpoint holds; `train_step` is a
pure function of (state, batch), jitted once by `compile_train_step` with
explicit shardings and the state donated; `train` is the loop.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vlmjax import checkpoint, config, errors, evals, losses, metrics, models, optim, sharding
from vlmjax.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array   # int32 scalar: number of updates applied
  params: Any       # pure dict of float32 arrays (nnx.to_pure_dict of the model's state)
  opt_state: Any    # optax state over `params`


def train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               loss_cfg: ml_collections.ConfigDict, seed: int, mesh: jax.sharding.Mesh,
               batch_axes: tuple[str, ...], constrain=lambda params: params) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch. Pure: jit it, do not call it eagerly in a loop.

  Randomness inside the model (e.g. CapPa's parallel-prediction masks) comes from
  (seed, step), so a resumed run draws what an uninterrupted one would.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    out = model(batch["image"], batch["text"], train=True, rng=rng)
    return losses.composite(out, batch, loss_cfg, mesh=mesh, batch_axes=batch_axes)

  (loss, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = constrain(optax.apply_updates(state.params, updates))  # e.g. CLIP's logit_scale <= 100
  grad_norm = optax.tree.norm(grads)
  # A non-finite loss or gradient drops the update (nan_policy decides what the loop does next).
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jnp.where(finite, new, old)
  params = jax.tree.map(keep, params, state.params)
  opt_state = jax.tree.map(keep, opt_state, state.opt_state)
  lr = schedule(optim.updates_applied(state.opt_state))  # trails state.step after skipped updates
  step_metrics = {**step_metrics, "grad_norm": grad_norm, "lr": lr, "finite": finite}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


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
  tx, schedule = optim.build(cfg.optim, cfg.total_steps)
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

  With `cfg.init_from`, parameters come from those converted weights, except the
  path prefixes in `cfg.init_reinit`, which keep their fresh initialisation.
  """
  def init(loaded) -> TrainState:
    model = models.build(cfg.model, nnx.Rngs(cfg.seed))
    params = nnx.to_pure_dict(nnx.state(model))
    if loaded is not None:
      fresh = optim.prefixes(cfg.init_reinit)
      params = jax.tree_util.tree_map_with_path(
          lambda path, new, old: new if optim.matches(optim.path_name(path), fresh) else old, params, loaded)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))
  loaded = None
  if cfg.init_from:
    check_init_tokenizer(cfg)
    from vlmjax import convert  # noqa: PLC0415
    loaded = convert.load_params(cfg.init_from, checkpoint.abstract_with_shardings(
        s.abstract_state.params, s.state_shardings.params))
    print(f"initialised from {cfg.init_from}" + (f" (fresh: {cfg.init_reinit})" if cfg.init_reinit else ""))
  return jax.jit(init, out_shardings=s.state_shardings)(loaded)


def check_init_tokenizer(cfg: ml_collections.ConfigDict) -> None:
  """Weights converted with their tokenizer (`INIT_FROM/tokenizer.json`) mean nothing with other token
  ids: a one-line ConfigError unless `data.train.tokenizer` is that file, or the token embedding is
  re-initialised (`init_reinit`)."""
  path = os.path.join(cfg.init_from, "tokenizer.json")
  if not os.path.isfile(path) or optim.matches("text.token_embed.embedding", optim.prefixes(cfg.init_reinit)):
    return
  kind, _, given = cfg.data.train.tokenizer.partition(":")
  if kind != "hf" or os.path.abspath(given) != os.path.abspath(path):
    raise errors.ConfigError(f"init_from={cfg.init_from!r} was converted with its tokenizer; train with "
                             f"--config.data.train.tokenizer=hf:{path} (data.train.tokenizer is "
                             f"{cfg.data.train.tokenizer!r}), or re-initialise text.token_embed in init_reinit")


def compile_train_step(cfg: ml_collections.ConfigDict, s: Setup):
  step = functools.partial(train_step, graphdef=s.graphdef, tx=s.tx, schedule=s.schedule, loss_cfg=cfg.loss,
                           seed=cfg.seed, mesh=s.mesh, batch_axes=sharding.batch_axes(cfg.mesh.rules),
                           constrain=models.param_constraint(cfg.model))
  return jax.jit(step, in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, sharding.replicated(s.mesh)), donate_argnums=(0,),
                 compiler_options=xla_options(cfg))


def xla_options(cfg: ml_collections.ConfigDict) -> dict:
  """`cfg.xla_options` for this backend, checked up front on a trivial program so that a bad
  name or value is a config error rather than a failure deep inside the first step."""
  platform = jax.default_backend()
  opts = config.compiler_options(cfg, platform)
  if opts:
    try:
      jax.jit(lambda x: x + 1, compiler_options=opts).lower(jnp.zeros(())).compile()
    except Exception as e:  # noqa: BLE001 -- XLA raises a runtime error naming the bad option
      raise errors.ConfigError(f"xla_options.{platform}: XLA rejected {opts}: {errors.one_line(e)}") from None
  return opts


class TrainingHalted(Exception):
  """The run stopped itself (non-finite steps); the last good checkpoint is kept."""


NAN_POLICIES = ("skip", "halt")


class NanGuard:
  """Reads each step's `finite` flag (one step late, so the device never waits) and applies
  `cfg.nan_policy`: `skip` (the update was dropped; halt after `nan_max_skips` in a row) or
  `halt` (stop at once)."""

  def __init__(self, policy: str, max_skips: int):
    if policy not in NAN_POLICIES:
      raise errors.ConfigError(f"nan_policy must be one of {'|'.join(NAN_POLICIES)}, got {policy!r}")
    self.policy, self.max_skips = policy, max_skips
    self.skipped = self.consecutive = 0

  def check(self, step: int, finite: jax.Array) -> None:
    if bool(jax.device_get(finite)):
      self.consecutive = 0
      return
    if self.policy == "halt":
      raise TrainingHalted(f"non-finite loss or gradient at step {step} (nan_policy=halt); "
                           "nothing was saved after it, the last good checkpoint is kept")
    self.skipped += 1
    self.consecutive += 1
    print(f"step {step}: non-finite loss or gradient, update skipped ({self.consecutive} in a row)", flush=True)
    if self.consecutive >= self.max_skips:
      raise TrainingHalted(f"{self.consecutive} non-finite steps in a row up to step {step} "
                           f"(nan_policy=skip, nan_max_skips={self.max_skips}); the last checkpoint is kept")


def _restore_or_init(cfg: ml_collections.ConfigDict, s: Setup, ckpt: checkpoint.Checkpointer,
                     data: pipeline.Batches) -> TrainState:
  """The latest checkpoint, resharded onto this run's mesh, or a fresh initialisation."""
  step = ckpt.latest_step()
  try:
    restored = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
    if restored is None:
      return init_state(cfg, s)
    state, data_state = restored
    data.set_state(data_state)
  except errors.UserError:
    raise
  except Exception as e:  # noqa: BLE001 -- orbax and grain raise many types; the user needs one line
    raise errors.ConfigError(
        f"cannot resume from {os.path.join(ckpt.directory, str(step))}: {errors.one_line(e)}; "
        "remove that step's folder to resume from an earlier one, or use a new --workdir") from None
  return state


# Settings a resumed run must share with the run that wrote its checkpoints: the model and what
# it trains (the checkpoint's shapes), and the data order (the saved iterator position means
# nothing in another order). Everything else (total_steps, intervals, evals, mesh, ...) may change.
RESUME_FIXED = ("optim.freeze", "seed", "batch_size", "data.train.source",  # and every model.* key
                "data.train.shuffle_buffer")  # the saved position is a place in windows of this size


def check_resume(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """On a workdir with checkpoints: a one-line ConfigError naming the settings that differ from
  its config.json where they must not; a note for the others. Keys an older config.json lacks
  are not compared."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      stored = _flat(json.load(f))
  except (OSError, ValueError) as e:  # cut short by a full disk, say: the run's own config replaces it
    print(f"cannot read {path} ({errors.one_line(e)}); resuming without comparing settings, and rewriting it")
    return
  now = _flat(json.loads(cfg.to_json_best_effort()))
  changed = {k: (stored[k], now[k]) for k in sorted(stored.keys() & now.keys()) if stored[k] != now[k]}
  fixed = {k: v for k, v in changed.items() if k.startswith("model.") or k in RESUME_FIXED}
  if fixed:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(fixed.items())[:4])
    more = f" (and {len(fixed) - 4} more)" if len(fixed) > 4 else ""
    raise errors.ConfigError(f"{workdir} holds checkpoints of another setup: {shown}{more}; resume with the "
                             f"same settings, or train in a new --workdir")
  if changed and jax.process_index() == 0:
    print("resuming with changed settings: " + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def train(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns the closing summary.

  `stop_after` ends the run early at that step, with a checkpoint, as a preempted run would.
  SIGTERM (or the cluster's preemption notice, agreed on by all processes) does the same
  at the next step. The summary's `finished` says whether training reached `total_steps`,
  `preempted` whether a signal or notice stopped it (`vlmjax train` then exits 143), and
  `interrupted` whether that was Ctrl-C (exit 130; a second Ctrl-C stops at once, unsaved).
  """
  mesh = sharding.make_mesh(cfg.mesh)
  if cfg.batch_size % mesh.size:
    raise errors.ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {mesh.size} devices of the mesh")
  evals.validate_all(cfg, mesh)
  guard = NanGuard(cfg.nan_policy, cfg.nan_max_skips)
  losses.check(cfg.loss)
  if "://" in workdir:
    raise errors.ConfigError(f"--workdir {workdir!r}: use a path on this machine or on storage every host mounts "
                             "(NFS, Lustre, a bucket through gcsfuse); config.json, metrics.jsonl and TensorBoard "
                             "are written as local files")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"cannot use --workdir {workdir!r}: {e.strerror or e}") from None
  if checkpoint.has_checkpoints(os.path.join(workdir, "checkpoints")):
    check_resume(cfg, workdir)
  if jax.process_index() == 0:
    try:
      config.dump(cfg, os.path.join(workdir, "config.json"))
    except OSError as e:
      raise errors.ConfigError(f"cannot write {os.path.join(workdir, 'config.json')}: {e.strerror or e}") from None
  s = setup(cfg, mesh)
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed,
                        image_size=cfg.model.image_size, context_length=cfg.model.text.context_length,
                        vocab_size=cfg.model.text.vocab_size, sharding=s.batch_sharding)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
  ckpt.remove_unfinished()
  preemption = checkpoint.PreemptionWatcher()
  try:
    state = _restore_or_init(cfg, s, ckpt, data)
    start = int(state.step)
    if start >= cfg.total_steps:
      print(f"run in {workdir} already finished at step {start} (total_steps={cfg.total_steps}); nothing to do")
      return {"steps": (start, start), "finished": True, "preempted": False, "interrupted": False}
    if start:
      print(f"resuming from step {start} in {workdir}")

    writer = metrics.Writer(workdir, total_steps=cfg.total_steps, batch_size=cfg.batch_size, start_step=start,
                            wandb_cfg=cfg.wandb, run_config=json.loads(cfg.to_json_best_effort()))
    step_fn = compile_train_step(cfg, s)
    last = min(cfg.total_steps, stop_after or cfg.total_steps)
    preempted = False
    pending = None   # (step, device metrics) to log: fetched only after the next step is dispatched
    unchecked = None  # (step, device `finite` flag) not yet read
    for step in range(start + 1, last + 1):
      state, step_metrics = step_fn(state, next(data))
      if unchecked is not None:
        guard.check(*unchecked)
      if pending is not None:
        _log(writer, pending, data, guard)
      unchecked = (step, step_metrics["finite"])
      log = step % cfg.log_every == 0 or step in (start + 1, last)
      pending = (step, step_metrics) if log else None
      preempted = preemption.reached(step)
      if preempted or step % cfg.ckpt_every == 0 or step == last:
        guard.check(*unchecked)  # never save the step after a non-finite one under `halt`
        unchecked = None
        ckpt.save(step, state, data.get_state())
      if preempted:
        why = "interrupted (Ctrl-C)" if preemption.interrupted else "preempted"
        print(f"{why}: saved step {step}; run the same command to resume", flush=True)
        break
      final = step == cfg.total_steps
      if evals.due(cfg.evals, step, final, cfg.eval_every):
        if pending is not None:  # this step's line first, then its evaluation
          _log(writer, pending, data, guard)
          pending = None
        try:
          with preemption.interruptible():  # an evaluation may outlast the grace period before SIGKILL
            results = evals.run_all(cfg, s.graphdef, state.params, s.mesh, step=step, final=final)
        except checkpoint.Preempted:
          if unchecked is not None:  # not saved at this step yet
            guard.check(*unchecked)
            unchecked = None
            ckpt.save(step, state, data.get_state())
          why = "interrupted (Ctrl-C)" if preemption.interrupted else "preempted"
          print(f"{why} during the evaluation at step {step}: saved step {step}; run the same command to "
                f"resume, and `vlmjax eval --workdir {workdir} --step {step}` for that evaluation", flush=True)
          preempted = True
          break
        writer.write_evals(step, results)
    if unchecked is not None:
      guard.check(*unchecked)
    if pending is not None:
      _log(writer, pending, data, guard)
    summary = writer.summary()
    writer.close()
    return {**summary, "finished": not preempted and last == cfg.total_steps, "preempted": preempted,
            "interrupted": preemption.interrupted}
  finally:
    preemption.close()
    data.close()
    ckpt.close()  # waits for the last async save


def _log(writer: metrics.Writer, pending: tuple[int, dict], data: pipeline.Batches, guard: NanGuard) -> None:
  step, device_metrics = pending
  host = jax.device_get(device_metrics)
  host.pop("finite")
  writer.write(step, host, {**data.stats(), "train/skipped_steps": guard.skipped})
