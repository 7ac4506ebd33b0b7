"""Training: the train state, the pure train step, and the loop.

Read top to bottom: `TrainState` is what a checkpoint holds; `train_step` is a
pure function of (state, batch), jitted once by `compile_train_step` with
explicit shardings and the state donated; `train` is the loop.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vlmjax import checkpoint, config, losses, metrics, models, optim, sharding
from vlmjax.data import pipeline


@flax.struct.dataclass
class TrainState:
  step: jax.Array   # int32 scalar: number of updates applied
  params: Any       # pure dict of float32 arrays (nnx.to_pure_dict of the model's state)
  opt_state: Any    # optax state over `params`


def train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               loss_cfg: ml_collections.ConfigDict, seed: int, mesh: jax.sharding.Mesh,
               batch_axes: tuple[str, ...]) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch. Pure: jit it, do not call it eagerly in a loop.

  Randomness inside the model (e.g. CapPa's parallel-prediction masks) comes from
  (seed, step), so a resumed run draws what an uninterrupted one would.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    out = model(batch["image"], batch["text"], train=True, rng=rng)
    return losses.composite(out, batch, loss_cfg, mesh=mesh, batch_axes=batch_axes)

  (_, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  step_metrics = {**step_metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
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
    raise config.ConfigError(f"model config: {e}") from None
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(abstract_params, cfg.mesh.rules, mesh)
  tx, schedule = optim.build(cfg.optim, cfg.total_steps)
  params = nnx.to_pure_dict(abstract_params)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
  replicated = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: replicated)
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
  return Setup(graphdef, tx, schedule, abstract, shardings,
               sharding.batch_sharding(mesh, cfg.mesh.rules), mesh)


def init_state(cfg: ml_collections.ConfigDict, s: Setup) -> TrainState:
  """Initialises parameters and optimiser state directly into their shardings."""
  def init() -> TrainState:
    model = models.build(cfg.model, nnx.Rngs(cfg.seed))
    params = nnx.to_pure_dict(nnx.state(model))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params))
  return jax.jit(init, out_shardings=s.state_shardings)()


def compile_train_step(cfg: ml_collections.ConfigDict, s: Setup):
  step = functools.partial(train_step, graphdef=s.graphdef, tx=s.tx, schedule=s.schedule, loss_cfg=cfg.loss,
                           seed=cfg.seed, mesh=s.mesh, batch_axes=sharding.batch_axes(cfg.mesh.rules))
  return jax.jit(step, in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, sharding.replicated(s.mesh)), donate_argnums=(0,))


def train(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns the closing summary.

  `stop_after` ends the run early at that step, with a checkpoint, as a preempted run would.
  """
  mesh = sharding.make_mesh(cfg.mesh)
  if cfg.batch_size % mesh.size:
    raise config.ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {mesh.size} devices of the mesh")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    config.dump(cfg, os.path.join(workdir, "config.json"))
  s = setup(cfg, mesh)
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed,
                        image_size=cfg.model.image_size, context_length=cfg.model.text.context_length,
                        vocab_size=cfg.model.text.vocab_size, sharding=s.batch_sharding)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)

  restored = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
  if restored is None:
    state = init_state(cfg, s)
  else:
    state, data_state = restored
    data.set_state(data_state)
  start = int(state.step)
  if start >= cfg.total_steps:
    print(f"run in {workdir} already finished at step {start} (total_steps={cfg.total_steps}); nothing to do")
    data.close()
    ckpt.close()
    return {"steps": (start, start), "finished": True}
  if start:
    print(f"resuming from step {start} in {workdir}")

  writer = metrics.Writer(workdir, total_steps=cfg.total_steps, batch_size=cfg.batch_size, start_step=start)
  step_fn = compile_train_step(cfg, s)
  last = min(cfg.total_steps, stop_after or cfg.total_steps)
  pending = None  # (step, device metrics): fetched only after the next step is dispatched
  for step in range(start + 1, last + 1):
    state, step_metrics = step_fn(state, next(data))
    if pending is not None:
      writer.write(pending[0], jax.device_get(pending[1]), data.stats())
    log = step % cfg.log_every == 0 or step in (start + 1, last)
    pending = (step, step_metrics) if log else None
    if step % cfg.ckpt_every == 0 or step == last:
      ckpt.save(step, state, data.get_state())
  if pending is not None:
    writer.write(pending[0], jax.device_get(pending[1]), data.stats())
  data.close()
  ckpt.close()
  summary = writer.summary()
  writer.close()
  return summary
