"""Training: the pure train step and the loop, read top to bottom.

`train_step` is a pure function of (state, batch), jitted once by `compile_train_step` with
explicit shardings and the state donated. `train` checks everything it can on shapes (the step is
traced and lowered on abstract arrays, the evaluators and data prepared), then touches the
workdir (config.json, run.json, log.txt), restores, compiles, and steps; the previous step's metrics are logged while the next one
runs (never blocking on the current step); checkpoints, evaluations and preemption happen
at step boundaries. The train state itself (what a checkpoint holds, how it is built and
restored) is in `train_state.py`; the workdir's files in `workdir.py`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vlmjax import checkpoint, compiled, console, distill, errors, evals, hardware, info, losses, metrics, microbatch
from vlmjax import models, optim, progress, sharding, workdir as workdirs, xla_options
from vlmjax.data import locca, naflex, pipeline
from vlmjax.evals import results as eval_results
from vlmjax.evals.suite import Suite
from vlmjax.preemption import Preempted, PreemptionWatcher
from vlmjax.train_state import Setup, TrainState, check_init, restore_or_init, setup


def train_step(state: TrainState, batch: dict, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               loss_cfg: ml_collections.ConfigDict, seed: int, mesh: jax.sharding.Mesh,
               batch_axes: tuple[str, ...], constrain=lambda params: params,
               microbatches: int = 1, distill_start: int | None = None) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch. Pure: jit it, do not call it eagerly in a loop.

  Randomness inside the model (CapPa's parallel-prediction masks, FLIP's patch dropout) comes
  from (seed, step), so a resumed run draws what an uninterrupted one would. With `microbatches`
  k > 1 the same loss and gradient come from k passes over slices of the batch (`microbatch.py`:
  GradCache; microbatch m draws from the step's key folded with m). With `distill_start`, SigLIP 2's
  self-distillation and masked prediction join from that step on (`distill.py`), the EMA of the
  parameters their teacher (set to the parameters after every update before that step).
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    out = model(batch["image"], batch["text"], train=True, rng=rng, **models.extra_inputs(batch))
    loss, metrics = losses.composite(out, batch, loss_cfg, mesh=mesh, batch_axes=batch_axes)
    if distill_start is None:
      return loss, metrics
    teacher = nnx.merge(graphdef, optim.ema_params(state.opt_state))
    extra, extra_metrics = distill.loss(model, teacher, batch["image"], rng, state.step, distill_start, loss_cfg)
    return loss + extra, {**metrics, **extra_metrics, "loss": loss + extra}

  if microbatches > 1:
    loss, step_metrics, grads = microbatch.loss_and_grads(
        state.params, batch, graphdef=graphdef, rng=rng, loss_cfg=loss_cfg, mesh=mesh, batch_axes=batch_axes,
        microbatches=microbatches)
  else:
    (loss, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = constrain(optax.apply_updates(state.params, updates))  # e.g. CLIP's logit_scale <= 100
  if distill_start is not None:  # the teacher starts as the student at the switch
    opt_state = optim.reset_ema(opt_state, params, state.step < distill_start)
  grad_norm = optax.tree.norm(grads)
  # A non-finite loss, gradient, or updated parameter or optimiser state (a huge lr, say) drops the
  # update (nan_policy decides what the loop does next): nothing non-finite is ever kept or saved.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params) & all_finite(opt_state)
  keep = lambda new, old: jnp.where(finite, new, old)
  params = jax.tree.map(keep, params, state.params)
  opt_state = jax.tree.map(keep, opt_state, state.opt_state)
  lr = schedule(optim.updates_applied(state.opt_state))  # trails state.step after skipped updates
  step_metrics = {**step_metrics, "grad_norm": grad_norm, "lr": lr, "finite": finite}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value of `tree` is finite (a scalar bool; integers, e.g. step counts, skipped)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def compile_train_step(cfg: ml_collections.ConfigDict, s: Setup):
  """The train step jitted with the run's shardings, the state donated (compiled at its first call)."""
  batch_axes = sharding.batch_axes(cfg.mesh.rules)
  microbatch.check(cfg.optim.microbatches, cfg.batch_size, s.mesh, batch_axes)
  step = functools.partial(train_step, graphdef=s.graphdef, tx=s.tx, schedule=s.schedule, loss_cfg=cfg.loss,
                           seed=cfg.seed, mesh=s.mesh, batch_axes=batch_axes,
                           constrain=models.param_constraint(cfg.model), microbatches=cfg.optim.microbatches,
                           distill_start=distill.start_step(cfg) if distill.active(cfg.loss) else None)
  return jax.jit(step, in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, sharding.replicated(s.mesh)), donate_argnums=(0,),
                 compiler_options=xla_options.for_backend(cfg))


def abstract_batch(cfg: ml_collections.ConfigDict, s: Setup, budget: int | None = None) -> dict:
  """The shapes, dtypes and sharding of the global batches the data pipeline produces (the image NaFlex's
  dict of arrays at data.train.max_patches > 0, of `budget` patches: default max_patches)."""
  S, L, n = cfg.model.image_size, cfg.model.text.context_length, budget or cfg.data.train.max_patches
  batch = {"image": (naflex.abstract_images(cfg.batch_size, n, cfg.model.vision.patch_size, s.batch_sharding,
                                            naflex.pack_geometry(cfg.data.train, cfg.batch_size, n)) if n
                     else jax.ShapeDtypeStruct((cfg.batch_size, S, S, 3), jnp.float32, sharding=s.batch_sharding)),
           "text": jax.ShapeDtypeStruct((cfg.batch_size, L), jnp.int32, sharding=s.batch_sharding)}
  if locca.active(cfg.data.train.locca):  # LocCa's decoder tasks (`vlmjax.data.locca`)
    batch["decoder_text"] = batch["text"]
    batch["decoder_loss"] = jax.ShapeDtypeStruct((cfg.batch_size, L), jnp.bool_, sharding=s.batch_sharding)
  return batch


def lower_train_step(cfg: ml_collections.ConfigDict, s: Setup, budget: int | None = None):
  """The train step traced and lowered on shapes only (nothing allocated, nothing compiled yet).
  Tracing runs the model and the losses, so parts that do not fit together (a sigmoid loss on a
  model without a logit bias, say) fail here with a ConfigError, before a workdir is touched."""
  return compile_train_step(cfg, s).lower(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings),
                                          abstract_batch(cfg, s, budget))


def compile_steps(cfg: ml_collections.ConfigDict, s: Setup, lowered):
  """The compiled step; with NaFlex's `data.train.budgets`, one per budget (`compiled.PerShape`)."""
  if not cfg.data.train.budgets:
    return lowered.compile()
  return compiled.PerShape({compiled.shapes_of(abstract_batch(cfg, s, n)): lower_train_step(cfg, s, n).compile()
                            for n in cfg.data.train.budgets})


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
      raise TrainingHalted(f"non-finite loss, gradient or updated parameters at step {step} (nan_policy=halt); "
                           "nothing was saved after it, the last good checkpoint is kept")
    self.skipped += 1
    self.consecutive += 1
    print(f"step {step}: non-finite loss, gradient or updated parameters, update skipped ({self.consecutive} in a row)", flush=True)
    if self.consecutive >= self.max_skips:
      raise TrainingHalted(f"{self.consecutive} non-finite steps in a row up to step {step} "
                           f"(nan_policy=skip, nan_max_skips={self.max_skips}); the last checkpoint is kept")




def train(cfg: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None) -> dict:
  """Trains `cfg` in `workdir`, resuming from its latest checkpoint. Returns the closing summary.

  Everything that can be checked without compiling (the config, the model and loss traced on
  shapes, the evaluators and their data, the training data) is checked before the workdir is
  touched. `stop_after` ends the run early at that step, with a checkpoint, as a preempted run
  would. SIGTERM (or the cluster's preemption notice, agreed on by all processes) does the same
  at the next step. The summary's `finished` says whether training reached `total_steps`,
  `preempted` whether a signal or notice stopped it (`vlmjax train` then exits 143), and
  `interrupted` whether that was Ctrl-C (exit 130; a second Ctrl-C stops at once, unsaved).
  """
  with contextlib.ExitStack() as stack:
    tee = console.Tee.active() or stack.enter_context(console.Tee())  # the console, for log.txt
    preemption = PreemptionWatcher()  # before the first step, a signal stops the run at once
    stack.callback(preemption.close)
    try:
      with preemption.startup():
        started = start_run(cfg, workdir, stack, tee, preemption)
    except Preempted:
      why = "interrupted (Ctrl-C)" if preemption.interrupted else "preempted"
      print(f"{why} before the first step: stopped; nothing new to save", flush=True)
      # `abandoned`: a restore or compile may still run in C++ threads (XLA's, orbax's), which abort the
      # interpreter's shutdown; `vlmjax train` ends the process with os._exit instead
      return {"steps": (0, 0), "finished": False, "preempted": True, "interrupted": preemption.interrupted,
              "abandoned": True}
    if isinstance(started, dict):  # nothing to do
      return started
    loop, state, start = started
    return loop.run(state, start, min(cfg.total_steps, stop_after or cfg.total_steps))


def start_run(cfg: ml_collections.ConfigDict, workdir: str, stack: contextlib.ExitStack, tee: console.Tee,
              preemption: PreemptionWatcher):
  """Everything before the first step: checks on shapes, then the workdir, restore and compile.
  Returns (loop, state, start step), or the summary of a run that has nothing left to do."""
  mesh = sharding.make_mesh(cfg.mesh)
  if cfg.batch_size % mesh.size:
    raise errors.ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {mesh.size} devices of the mesh")
  losses.check(cfg.loss)
  locca.check_config(cfg, models.takes_decoder_text(cfg.model))
  naflex.check_config(cfg, distill=distill.active(cfg.loss), devices=mesh.size)
  distill.check(cfg)
  metrics.check_wandb(cfg.wandb)
  guard = NanGuard(cfg.nan_policy, cfg.nan_max_skips)
  with progress.Task("building the model and tracing the train step"):
    s, lowered = preemption.call(lambda: trace(cfg, mesh))
  suite = preemption.call(lambda: prepare_evaluators(cfg, mesh))  # every evaluator checked, its data read
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=cfg.seed,
                        image_size=cfg.model.image_size, context_length=cfg.model.text.context_length,
                        vocab_size=cfg.model.text.vocab_size, sharding=s.batch_sharding,
                        patch_size=cfg.model.vision.patch_size)
  stack.callback(data.close)
  preemption.check()
  ckpt_dir = os.path.join(workdir, "checkpoints")
  resuming = checkpoint.has_checkpoints(ckpt_dir)
  if not resuming:
    check_init(cfg, s)
  lock = workdirs.prepare(cfg, workdir, resuming=resuming)
  if lock is not None:
    stack.callback(lock.release)
  ckpt = checkpoint.Checkpointer(ckpt_dir, cfg)
  stack.callback(ckpt.close)  # waits for the last async save
  ckpt.remove_unfinished()
  latest = ckpt.latest_step() or 0
  if jax.process_index() == 0:
    tee.attach(os.path.join(workdir, "log.txt"), header=" ".join(sys.argv))
  # `latest` is what is tried first: an unreadable step is set aside (one atomic rename, the only disk
  # effect inside `preemption.call`) and an earlier one restored
  with progress.Task(f"restoring step {latest} from {ckpt_dir}" if latest else "initialising the parameters"):
    state = preemption.call(lambda: restore_or_init(cfg, s, ckpt, data))
  start = int(state.step)
  workdirs.record_launch(workdir, resumed_from=start)
  if start >= cfg.total_steps:
    print(f"run in {workdir} already finished at step {start} (total_steps={cfg.total_steps}); nothing to do")
    return {"steps": (start, start), "finished": True, "preempted": False, "interrupted": False}
  if start:
    print(f"resuming from step {start} in {workdir}")
  with progress.Task("compiling the train step"):
    step_fn = preemption.call(lambda: compile_steps(cfg, s, lowered))
    flops, peak = model_flops(cfg)
  writer = metrics.Writer(workdir, total_steps=cfg.total_steps, batch_size=cfg.batch_size, start_step=start,
                          wandb_cfg=cfg.wandb, run_config=json.loads(cfg.to_json_best_effort()),
                          flops_per_step=flops, peak_flops=peak)
  return Loop(cfg, workdir, s, step_fn, data, ckpt, guard, preemption, suite, writer), state, start


def trace(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(setup, the train step lowered on shapes)."""
  s = setup(cfg, mesh)
  return s, lower_train_step(cfg, s)


def prepare_evaluators(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Suite:
  if not cfg.evals:
    return evals.prepare_all(cfg, mesh)
  with progress.Task(f"preparing the evaluators ({', '.join(cfg.evals.keys())})"):
    return evals.prepare_all(cfg, mesh)


def model_flops(cfg: ml_collections.ConfigDict) -> tuple[float | None, float | None]:
  """(model FLOPs of one global step, peak FLOP/s of all devices) where the device's peak is known
  (`hardware.PEAK_FLOPS`), for `train/mfu`; (None, None) elsewhere (CPU), where counting is skipped."""
  peak = hardware.peak_flops(jax.devices()[0].device_kind)
  if peak is None:
    return None, None
  return info.train_flops_per_example(cfg) * cfg.batch_size, peak * jax.device_count()


class Loop:
  """The steps of one `train` call and their bookkeeping: a step's metrics are logged and its
  `finite` flag read only after the next step is dispatched (`pending`, `unchecked`), so the host
  never waits on the device, except before a save, which must never hold a non-finite step."""

  def __init__(self, cfg, workdir, s: Setup, step_fn, data: pipeline.Batches, ckpt: checkpoint.Checkpointer,
               guard: NanGuard, preemption: PreemptionWatcher, suite: Suite, writer: metrics.Writer):
    self.cfg, self.workdir, self.s, self.step_fn, self.data, self.ckpt = cfg, workdir, s, step_fn, data, ckpt
    self.guard, self.preemption, self.suite, self.writer = guard, preemption, suite, writer
    self.pending: tuple[int, dict, dict] | None = None   # (step, device metrics, host facts) to log
    self.unchecked: tuple[int, jax.Array] | None = None  # (step, device `finite` flag) not yet read
    self.data_seconds = 0.0  # time spent waiting for batches
    self.saved = -1  # the last step saved by this loop

  def next_batch(self) -> dict:
    start = time.perf_counter()
    with self.preemption.interruptible():  # a batch slow to come (a stalled store) never delays a stop
      batch = next(self.data)
    self.data_seconds += time.perf_counter() - start
    return batch

  def run(self, state: TrainState, start: int, last: int) -> dict:
    cfg = self.cfg
    preempted = False
    for step in range(start + 1, last + 1):
      position = self.data.get_state()  # the data's position after step - 1 (a reference: no copy)
      try:
        batch = self.next_batch()
      except Preempted:
        self.stop_waiting(step - 1, state, position, first=start + 1)
        preempted = True
        break
      logged = step % cfg.log_every == 0 or step in (start + 1, last)
      # What the data pipeline says now describes the batches up to this step's (not the next one's).
      host = {"extra": self.data.stats(), "at": time.time(), "data_seconds": self.data_seconds} if logged else {}
      state, step_metrics = self.step_fn(state, batch)
      self.check_finite()
      self.flush_log()
      self.unchecked = (step, step_metrics["finite"])
      if logged:
        self.pending = (step, step_metrics, host)
      preempted = self.preemption.reached(step)
      if preempted or step % cfg.ckpt_every == 0 or step == last:
        self.save(step, state)  # never the step after a non-finite one under `halt`
      if preempted:
        self.ckpt.wait()  # "saved" only once it is
        print(f"{self.why()}: saved step {step}; run the same command to resume", flush=True)
        break
      final = step == cfg.total_steps
      if self.suite.due(step, final) and not self.evaluate(step, state, final):
        preempted = True
        break
    self.check_finite()
    self.flush_log()
    finished = not preempted and last == cfg.total_steps
    summary = self.writer.summary(None if finished else self.why() if preempted else "stop_after")
    self.writer.close()
    return {**summary, "finished": finished, "preempted": preempted, "interrupted": self.preemption.interrupted}

  def evaluate(self, step: int, state: TrainState, final: bool) -> bool:
    """Runs the evaluators due at `step`; False if a signal stopped them (the step is then saved)."""
    self.flush_log()  # this step's line first, then its evaluation
    try:
      with self.preemption.interruptible():  # an evaluation may outlast the grace period before SIGKILL
        results = self.suite.run(self.s.graphdef, state.params, step=step, final=final,
                                 ema=optim.ema_params(state.opt_state))  # for evals.<name>.params="ema"
    except Preempted:
      if self.saved != step:
        self.save(step, state)
      self.ckpt.wait()
      print(f"{self.why()} during the evaluation at step {step}: saved step {step}; run the same command to "
            f"resume, and `vlmjax eval --workdir {self.workdir} --step {step}` for that evaluation", flush=True)
      return False
    self.writer.write_evals(step, results)
    if jax.process_index() == 0:
      eval_results.write(self.workdir, step, results, self.suite.outputs, self.suite.tables)  # eval/<step>*
    return True

  def stop_waiting(self, step: int, state: TrainState, position: dict, first: int) -> None:
    """A signal came while waiting for the batch of step + 1: saves `step` at the data's `position`
    before that wait (the wait may have moved the iterator) unless saved already."""
    if step < first:
      print(f"{self.why()} while waiting for the first batch: stopped; nothing new to save", flush=True)
      return
    if self.saved != step:
      self.save(step, state, position)
    self.ckpt.wait()
    print(f"{self.why()} while waiting for data: saved step {step}; run the same command to resume", flush=True)

  def save(self, step: int, state: TrainState, position: dict | None = None) -> None:
    self.check_finite()
    self.ckpt.save(step, state, self.data.get_state() if position is None else position)
    self.saved = step

  def check_finite(self) -> None:
    if self.unchecked is not None:
      self.guard.check(*self.unchecked)
      self.unchecked = None

  def flush_log(self) -> None:
    if self.pending is not None:
      step, device_metrics, host = self.pending
      self.pending = None
      values = jax.device_get(device_metrics)
      values.pop("finite")
      self.writer.write(step, values, {**host["extra"], "train/skipped_steps": self.guard.skipped},
                        at=host["at"], data_seconds=host["data_seconds"])

  def why(self) -> str:
    return "interrupted (Ctrl-C)" if self.preemption.interrupted else "preempted"
