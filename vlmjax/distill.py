"""SigLIP 2's self-distillation and masked prediction, switched on for the last part of training.

From step `start_step(cfg)` (`loss.distill_from` x `total_steps`) two terms join the loss:

  distill  SILC's local-to-global consistency: the student embeds `loss.distill.local_crops`
           random local views of each image (square crops of `local_scale` of its area, resized to
           `local_size` px: the ViT reads them on a smaller grid) and matches, through a projection
           head, the teacher's embedding of the whole image.
  masked   TIPS' masked prediction: the student reads the image with `mask_ratio` of its patch
           embeddings replaced by a mask token and matches the teacher's patch features (through a
           patch head) at the masked positions.

The teacher is the EMA of the student's parameters (`optim.ema_decay`, kept in the optimiser state,
`optim.ema_params`): before the start step the train step sets the EMA to the parameters after
every update (`optim.reset_ema`), so the teacher starts as the student and then trails it. Both
matches are DINO's: cross-entropy between the teacher's softmax (logits centred by their batch mean,
temperature `teacher_temp`) and the student's log-softmax (`student_temp`); the teacher gets no
gradient. Views and masks come from the step's key, so a resumed run draws what an uninterrupted one
would, and the switch is a function of the step: resume is exact through it. Before the start step
the extra passes are not run (`lax.cond`); the terms read 0.

Shape legend: B batch, n local views per image, S image size, s local view size, N patches, K prototypes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from vlmjax.errors import ConfigError

WEIGHTS = ("distill_weight", "masked_weight")
VIEWS_STREAM, MASK_STREAM = 0x5111C, 0x7195  # folded into the step's key: the views' and the masks' draws


def active(loss_cfg: ml_collections.ConfigDict) -> bool:
  """Whether the config has either term with a weight > 0."""
  return any(k in loss_cfg and loss_cfg[k] > 0 for k in WEIGHTS)


def start_step(cfg: ml_collections.ConfigDict) -> int:
  """The first step with the two terms: round(distill_from x total_steps)."""
  return int(round(cfg.loss.distill_from * cfg.total_steps))


def _num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(cfg: ml_collections.ConfigDict) -> None:
  """One-line ConfigErrors for a distillation config that cannot work (the whole config)."""
  loss = cfg.loss
  for key in WEIGHTS:
    if key in loss and (not _num(loss[key]) or loss[key] < 0):
      raise ConfigError(f"loss.{key}={loss[key]!r} must be a number >= 0")
  if not active(loss):
    return
  d, where = loss.distill, "loss.distill"
  if not _num(loss.distill_from) or not 0 < loss.distill_from <= 1:
    raise ConfigError(f"loss.distill_from={loss.distill_from!r} must be a fraction of training in (0, 1] "
                      "(0.8: the last 20% of steps, as SigLIP 2)")
  if "distill_head" not in cfg.model or not cfg.model.distill_head.prototypes:
    raise ConfigError(f"loss.distill_weight / masked_weight need a model with distillation heads (model.name="
                      f"siglip2 with model.distill_head.prototypes > 0); model.name={cfg.model.name!r} has none")
  if not cfg.optim.ema_decay:
    raise ConfigError("self-distillation's teacher is the EMA of the parameters, and optim.ema_decay is 0: set it "
                      "(e.g. 0.999)")
  if cfg.optim.microbatches != 1:
    raise ConfigError("loss.distill_weight / masked_weight do not run in microbatches yet; set optim.microbatches=1")
  S, p = cfg.model.image_size, cfg.model.vision.patch_size
  if not isinstance(d.local_crops, int) or isinstance(d.local_crops, bool) or d.local_crops < 1:
    raise ConfigError(f"{where}.local_crops={d.local_crops!r} must be an int >= 1")
  if not isinstance(d.local_size, int) or not p <= d.local_size <= S or d.local_size % p:
    raise ConfigError(f"{where}.local_size={d.local_size!r} must be a multiple of the patch size {p} no larger "
                      f"than the image ({S} px): a crop larger than the image cannot be taken")
  if not (_num(d.local_scale_min) and _num(d.local_scale_max) and 0 < d.local_scale_min <= d.local_scale_max <= 1):
    raise ConfigError(f"{where}.local_scale_min={d.local_scale_min!r} and local_scale_max={d.local_scale_max!r} "
                      "must satisfy 0 < min <= max <= 1 (the local crop's fraction of the image area)")
  if not _num(d.mask_ratio) or not 0 < d.mask_ratio < 1:
    raise ConfigError(f"{where}.mask_ratio={d.mask_ratio!r} must lie in (0, 1)")
  for key in ("teacher_temp", "student_temp"):
    if not _num(d[key]) or not d[key] > 0:
      raise ConfigError(f"{where}.{key}={d[key]!r} must be a number > 0")


def local_views(image_BxSxSx3: jax.Array, rng: jax.Array, n: int, size: int, scale: tuple[float, float]
                ) -> jax.Array:
  """[B * n, size, size, 3]: n square crops per image (side sqrt(area fraction) x S, the fraction uniform
  in `scale`, placed uniformly inside the image), each resized to `size` (bilinear, antialiased)."""
  B, S = image_BxSxSx3.shape[0], image_BxSxSx3.shape[1]
  k_area, k_x, k_y = jax.random.split(rng, 3)
  side_Bxn = jnp.sqrt(jax.random.uniform(k_area, (B, n), minval=scale[0], maxval=scale[1])) * S
  x0_Bxn = jax.random.uniform(k_x, (B, n)) * (S - side_Bxn)
  y0_Bxn = jax.random.uniform(k_y, (B, n)) * (S - side_Bxn)

  def crop(img_SxSx3, side, x0, y0):
    k = size / side
    return jax.image.scale_and_translate(img_SxSx3, (size, size, 3), (0, 1), jnp.stack([k, k]),
                                         jnp.stack([-y0 * k, -x0 * k]), "linear", antialias=True)

  views = jax.vmap(lambda img, s, x, y: jax.vmap(lambda a, b, c: crop(img, a, b, c))(s, x, y))(
      image_BxSxSx3, side_Bxn, x0_Bxn, y0_Bxn)
  return views.reshape(B * n, size, size, 3).astype(image_BxSxSx3.dtype)


def patch_mask(rng: jax.Array, batch: int, n: int, ratio: float) -> jax.Array:
  """bool [batch, n]: round(ratio x n) random patches per image (at least one)."""
  masked = max(1, round(ratio * n))
  ranks_BxN = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, n)), axis=1), axis=1)
  return ranks_BxN < masked


def teacher_probs(logits: jax.Array, temp: float, axes: tuple[int, ...]) -> jax.Array:
  """softmax((logits - their mean over `axes`) / temp), no gradient: DINO's centred, sharpened target."""
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  return jax.nn.softmax((logits - logits.mean(axis=axes, keepdims=True)) / temp, axis=-1)


def cross_entropy(target_probs: jax.Array, student_logits: jax.Array, temp: float) -> jax.Array:
  """Per row: -sum_k p_k log softmax(student / temp)_k."""
  return -jnp.sum(target_probs * jax.nn.log_softmax(student_logits.astype(jnp.float32) / temp, axis=-1), axis=-1)


def terms(student, teacher, image_BxSxSx3: jax.Array, rng: jax.Array, loss_cfg: ml_collections.ConfigDict
          ) -> tuple[jax.Array, jax.Array]:
  """(distill loss, masked loss) of one batch: the teacher (a model with the EMA parameters) reads the
  whole image, the student the local views and the masked image."""
  d, B = loss_cfg.distill, image_BxSxSx3.shape[0]
  t_global_BxK, t_patch_BxNxK = teacher.distill_logits(image_BxSxSx3)
  views = local_views(image_BxSxSx3, jax.random.fold_in(rng, VIEWS_STREAM), d.local_crops, d.local_size,
                      (d.local_scale_min, d.local_scale_max))
  s_local_BnxK, _ = student.distill_logits(views)
  target_BnxK = jnp.repeat(teacher_probs(t_global_BxK, d.teacher_temp, (0,)), d.local_crops, axis=0)
  distill = jnp.mean(cross_entropy(target_BnxK, s_local_BnxK, d.student_temp))
  mask_BxN = patch_mask(jax.random.fold_in(rng, MASK_STREAM), B, t_patch_BxNxK.shape[1], d.mask_ratio)
  _, s_patch_BxNxK = student.distill_logits(image_BxSxSx3, mask_BxN=mask_BxN)
  ce_BxN = cross_entropy(teacher_probs(t_patch_BxNxK, d.teacher_temp, (0, 1)), s_patch_BxNxK, d.student_temp)
  masked = jnp.sum(ce_BxN * mask_BxN) / jnp.sum(mask_BxN)
  return distill, masked


def loss(student, teacher, image: jax.Array, rng: jax.Array, step: jax.Array, start: int,
         loss_cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
  """(weighted sum of the two terms, their metrics), both 0 before `start` (the passes skipped)."""
  def on():
    return terms(student, teacher, image, rng, loss_cfg)

  def off():
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
  distill, masked = jax.lax.cond(step >= start, on, off)
  total = loss_cfg.distill_weight * distill + loss_cfg.masked_weight * masked
  return total, {"distill_loss": distill, "masked_loss": masked}
