"""The optimiser: AdamW with linear warmup and cosine decay, gradient clipping, decay mask,
per-tower learning-rate multipliers, freezing.

Parameters are named by their dotted path (`vision.blocks.layers.0.mlp.fc1.kernel`);
`optim.freeze` lists path prefixes (comma-separated, e.g. `vision` or
`text,text_proj`) whose parameters get no updates at all; `optim.lr_mult` scales the
learning rate of path prefixes (`vision=0.1,text=0.5`; the longest matching prefix
wins), weight decay included, as a per-group lr in PyTorch does.
"""

from __future__ import annotations

import jax
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


def build(cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
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
  return tx, lr


def updates_applied(opt_state) -> jax.Array:
  """The learning-rate schedule's step in `opt_state`: updates applied so far. It trails the train
  state's step by the updates skipped for a non-finite loss, so the lr this gives is the one used."""
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  if len(counts) != 1:
    raise ValueError(f"expected one schedule state in the optimiser state, found {len(counts)}")
  return counts[0]
