"""The optimiser: AdamW with linear warmup and cosine decay, gradient clipping, decay mask,
per-tower learning-rate multipliers, freezing.

Parameters are named by their dotted path (`vision.blocks.layers.0.mlp.fc1.kernel`);
`optim.freeze` lists path prefixes (comma-separated, e.g. `vision` or
`text,text_proj`) whose parameters get no updates at all; `optim.lr_mult` scales the
learning rate of path prefixes (`vision=0.1,text=0.5`; the longest matching prefix
wins), weight decay included, as a per-group lr in PyTorch does.

`optim.ema_decay` (0: off) keeps an exponential moving average of the parameters in the
optimiser state (`with_ema`: checkpointed, resumed and sharded with it, and kept unchanged by a
step whose update is dropped as non-finite); `ema_params(opt_state)` reads it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=total_steps, end_value=cfg.lr * cfg.end_lr_ratio)


def path_name(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def prefixes(spec: str) -> list[str]:
  return [p.strip() for p in spec.split(",") if p.strip()]


def matches(name: str, prefix_list: list[str]) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefix_list)


def check_prefixes(params, spec: str, key: str) -> None:
  """A prefix in `spec` that names no parameter is a config error (a typo would silently do nothing)."""
  from vlmjax.errors import ConfigError  # noqa: PLC0415
  names = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for p in prefixes(spec):
    if not any(matches(n, [p]) for n in names):
      tops = sorted({n.split(".")[0] for n in names})
      raise ConfigError(f"{key}: {p!r} names no parameter; top-level parts: {', '.join(tops)}")


def lr_multipliers(spec: str) -> dict[str, float]:
  """`optim.lr_mult` ("prefix=factor,...") as {prefix: factor}; a one-line ConfigError if malformed."""
  from vlmjax.errors import ConfigError  # noqa: PLC0415
  out = {}
  for item in prefixes(spec):
    prefix, eq, raw = item.partition("=")
    try:
      factor = float(raw)
    except ValueError:
      factor = None
    if not eq or not prefix.strip() or factor is None or not factor > 0 or prefix.strip() in out:
      raise ConfigError(f"optim.lr_mult: {item!r} is not prefix=factor with a factor > 0 and each prefix once "
                        f"(e.g. vision=0.1,text=0.5; optim.freeze stops a part altogether)")
    out[prefix.strip()] = factor
  return out


def _multiplier(name: str, mults: dict[str, float]) -> float:
  hits = [p for p in mults if matches(name, [p])]
  return mults[max(hits, key=len)] if hits else 1.0


def decay_mask(params) -> dict:
  """Weight decay on matrices (kernels, embeddings); not on biases, norms, scales or queries."""
  def decays(path, leaf) -> bool:
    name = str(getattr(path[-1], "key", path[-1]))
    return name in ("kernel", "embedding") and getattr(leaf, "ndim", 0) >= 2
  return jax.tree_util.tree_map_with_path(decays, params)


def build(cfg: ml_collections.ConfigDict, total_steps: int,
          constrain: Callable[[Any], Any] = lambda params: params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser and its lr schedule; `constrain` is what the train step applies to the updated
  parameters (`models.param_constraint`), so that the EMA (`cfg.ema_decay`) averages those."""
  lr = schedule(cfg, total_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
  )
  mults = lr_multipliers(cfg.lr_mult)
  if mults:  # scales the finished update (Adam step and weight decay): the group's lr times the factor
    tx = optax.chain(tx, optax.multi_transform(
        {f: optax.scale(f) for f in {*mults.values(), 1.0}},
        lambda params: jax.tree_util.tree_map_with_path(lambda path, _: _multiplier(path_name(path), mults), params)))
  frozen = prefixes(cfg.freeze)
  if frozen:
    label = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if matches(path_name(path), frozen) else "trained", params)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, label)
  if cfg.ema_decay:
    tx = with_ema(tx, cfg.ema_decay, constrain)
  return tx, lr


class EmaState(NamedTuple):
  """`with_ema`'s state: the EMA of the parameters (`ema`, a tree like them, sharded like them: see
  `train_state.setup`), the EMA updates made (`count`), and the wrapped optimiser's state (`inner`)."""
  count: jax.Array
  ema: Any
  inner: Any


def ema_decay_at(decay: float, count: jax.Array) -> jax.Array:
  """The decay of EMA update number `count` (0: the first): min(decay, (1 + count) / (10 + count)) in
  float32, TensorFlow's `ExponentialMovingAverage(num_updates=...)` warm-up, so that the random
  initialisation is forgotten early (0.1 at the first update, 0.5 at the 9th; `decay` itself from
  count (10 * decay - 1) / (1 - decay) on: about 90,000 for 0.9999, 8,990 for 0.999)."""
  count = jnp.asarray(count).astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1 + count) / (10 + count))


def with_ema(tx: optax.GradientTransformation, decay: float,
             constrain: Callable[[Any], Any] = lambda params: params) -> optax.GradientTransformation:
  """`tx`, with an exponential moving average of the parameters in its state (`EmaState`).

  Initialised to the initial parameters; after each update, with `new` the updated parameters
  (`constrain(params + updates)`, what the train step keeps) and d = `ema_decay_at(decay, count)`:
  ema <- ema + (1 - d) * (new - ema), i.e. d * ema + (1 - d) * new (in this form a parameter that
  does not change, a frozen one, keeps its EMA exactly). The updates are `tx`'s, untouched."""
  def init(params):
    return EmaState(count=jnp.zeros([], jnp.int32), ema=jax.tree.map(jnp.copy, params), inner=tx.init(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("optim.with_ema needs the parameters: tx.update(grads, opt_state, params)")
    updates, inner = tx.update(updates, state.inner, params)
    new = constrain(optax.apply_updates(params, updates))
    keep = 1 - ema_decay_at(decay, state.count)
    ema = jax.tree.map(lambda e, p: (e + keep * (p - e)).astype(e.dtype), state.ema, new)
    return updates, EmaState(count=optax.safe_increment(state.count), ema=ema, inner=inner)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state) -> Any | None:
  """The EMA of the parameters kept in `opt_state` (`optim.ema_decay`), a tree like the parameters,
  sharded like them; None if the run keeps none (ema_decay 0). For evaluators (`evals.<name>.params
  = "ema"`) and for objectives that read a teacher (distillation)."""
  return opt_state.ema if isinstance(opt_state, EmaState) else None


def reset_ema(opt_state, params, when: jax.Array):
  """`opt_state` with its EMA set to `params` where `when` (a traced bool) holds: self-distillation's
  teacher follows the student exactly until its start step (`vlmjax.distill`)."""
  if not isinstance(opt_state, EmaState):
    raise ValueError("optim.reset_ema needs an optimiser state with an EMA (optim.ema_decay > 0)")
  return opt_state._replace(ema=jax.tree.map(lambda e, p: jnp.where(when, p.astype(e.dtype), e), opt_state.ema, params))


def updates_applied(opt_state) -> jax.Array:
  """The learning-rate schedule's step in `opt_state`: updates applied so far. It trails the train
  state's step by the updates skipped for a non-finite loss, so the lr this gives is the one used."""
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  if len(counts) != 1:
    raise ValueError(f"expected one schedule state in the optimiser state, found {len(counts)}")
  return counts[0]
