"""What every evaluator shares: its common config fields, their checks, and the schedule.

Common fields of `cfg.evals.<name>`: `type` (a key of `registry.EVALUATORS`), `data.source`
(a data spec), `data.data_dir` (TFDS data_dir for tfds: specs; "": TFDS's default),
`batch_size` (global), `every` (run when step % every == 0; 0: only at the last step; always at
the last step), `num_examples` (the first N records; 0: all), `image_mode` (`center_crop`, the
default: the centred square, resized to the model's size, as CLIP-style evaluations do;
`resize`: the whole image, aspect not kept), `params` (which weights it evaluates: `params`, the
default, the trained parameters; `ema`, their moving average, which needs `optim.ema_decay` > 0),
`max_patches` (NaFlex runs: the patch budget each image is read at; 0, the default: the run's
`data.train.max_patches`).
No jax here: configs import it.
"""

from __future__ import annotations

import ml_collections

from vlmjax import config
from vlmjax.errors import ConfigError

IMAGE_MODES = ("center_crop", "resize")
PARAMS = ("params", "ema")  # evals.<name>.params: the trained parameters, or their EMA (optim.ema_decay)


def fields(type_: str, source: str, *, batch_size: int, every: int, num_examples: int,
           image_mode: str, params: str = "params", max_patches: int = 0) -> ml_collections.ConfigDict:
  """The common fields of an evaluator config; each evaluator's `config` adds its own."""
  return ml_collections.ConfigDict(dict(
      type=type_, data=ml_collections.ConfigDict(dict(source=source, data_dir="")), batch_size=batch_size, every=every,
      num_examples=num_examples, image_mode=image_mode, params=params, max_patches=max_patches))


def check(where: str, ev: ml_collections.ConfigDict) -> None:
  """One-line ConfigError for a common field out of range."""
  if set(ev.data.keys()) != {"source", "data_dir"}:
    raise ConfigError(f"{where}.data must have exactly 'source' (e.g. synthetic:shapes:validation) and "
                      f"'data_dir', got {sorted(ev.data.keys())}")
  config.check_data_dir(ev.data.data_dir, ev.data.source, f"{where}.data.data_dir")
  if ev.image_mode not in IMAGE_MODES:
    raise ConfigError(f"{where}.image_mode={ev.image_mode!r} is unknown; valid: {', '.join(IMAGE_MODES)}")
  if ev.params not in PARAMS:
    raise ConfigError(f"{where}.params={ev.params!r} is unknown; valid: {', '.join(PARAMS)} (the trained "
                      "parameters, or their moving average: optim.ema_decay)")
  if not isinstance(ev.batch_size, int) or ev.batch_size <= 0:
    raise ConfigError(f"{where}.batch_size must be a positive int, got {ev.batch_size!r}")
  for key in ("every", "num_examples", "max_patches"):
    if not isinstance(ev[key], int) or ev[key] < 0:
      raise ConfigError(f"{where}.{key} must be an int >= 0, got {ev[key]!r}")


def check_ema(cfg: ml_collections.ConfigDict) -> None:
  """One-line ConfigError for an evaluator of `cfg` (the whole config) that asks for the EMA of the
  parameters (`params="ema"`) of a run that keeps none (`optim.ema_decay` 0)."""
  for name in cfg.evals.keys():
    if cfg.evals[name].params == "ema" and not cfg.optim.ema_decay:
      raise ConfigError(f"evals.{name}.params='ema' needs an EMA of the parameters, and optim.ema_decay is 0 "
                        "(none kept): set optim.ema_decay (e.g. 0.9999) for training, or params='params'")


def due(evals: ml_collections.ConfigDict, step: int, final: bool = False, every: int = 0) -> list[str]:
  """Names of the evaluators that run at `step`: all of them at the last step (`final`) and at
  multiples of the run's `eval_every` (`every`; 0: none), and each at multiples of its own `every`."""
  return [name for name in evals.keys()
          if final or (every > 0 and step % every == 0) or (evals[name].every > 0 and step % evals[name].every == 0)]
