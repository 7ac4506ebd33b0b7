"""Evaluator configs: one complete ConfigDict per type, for `cfg.evals.<name>` (no jax imported).

    c.evals.shapes_zs = defaults.zero_shot("synthetic:shapes:validation", num_examples=512)

Every field is present, so `--config.evals.<name>.<field>=v` overrides work and
nothing is read with a silent default. Common fields: `type`, `data.source` (a
data spec), `data.data_dir` (TFDS data_dir for tfds: specs; "": TFDS's
default), `batch_size` (global), `every` (run when step % every == 0; 0: only
at the last step; always at the last step), `num_examples` (the first N
records; 0: all), `image_mode` (`center_crop`, the default: the centred square,
resized to the model's size, as CLIP-style evaluations do; `resize`: the whole
image, aspect not kept).
"""

from __future__ import annotations

import ml_collections

from vlmjax.errors import ConfigError

TYPES = ("zero_shot", "retrieval", "captioning")
IMAGE_MODES = ("center_crop", "resize")


def _common(type_: str, source: str, *, batch_size: int, every: int, num_examples: int,
            image_mode: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      type=type_, data=ml_collections.ConfigDict(dict(source=source, data_dir="")), batch_size=batch_size, every=every,
      num_examples=num_examples, image_mode=image_mode))


def zero_shot(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
              image_mode: str = "center_crop", templates="photo", class_names: str = "") -> ml_collections.ConfigDict:
  """templates: a named set (shapes | photo | plain) or a tuple of strings with one '{}'.
  class_names: '' (from the source) or a file with one name per line, in label order."""
  c = _common("zero_shot", source, batch_size=batch_size, every=every, num_examples=num_examples,
              image_mode=image_mode)
  c.templates = templates
  c.class_names = class_names
  return c


def retrieval(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
              image_mode: str = "center_crop", ks: tuple[int, ...] = (1, 5, 10)) -> ml_collections.ConfigDict:
  c = _common("retrieval", source, batch_size=batch_size, every=every, num_examples=num_examples,
              image_mode=image_mode)
  c.ks = tuple(ks)
  return c


def captioning(source: str, *, batch_size: int = 64, every: int = 0, num_examples: int = 0,
               image_mode: str = "center_crop", max_len: int = 32,
               method: str = "greedy", beam_size: int = 4, top_k: int = 0, top_p: float = 1.0,
               temperature: float = 1.0, length_penalty: float = 1.0, seed: int = 0,
               meteor: bool = True) -> ml_collections.ConfigDict:
  """method: greedy | beam | sample. meteor: add METEOR when Java is present."""
  c = _common("captioning", source, batch_size=batch_size, every=every, num_examples=num_examples,
              image_mode=image_mode)
  c.update(dict(max_len=max_len, method=method, beam_size=beam_size, top_k=top_k, top_p=top_p,
                temperature=temperature, length_penalty=length_penalty, seed=seed, meteor=meteor))
  return c


FIELDS = {
    "zero_shot": set(zero_shot("x").keys()),
    "retrieval": set(retrieval("x").keys()),
    "captioning": set(captioning("x").keys()),
}


def validate(name: str, ev) -> None:
  """One-line ConfigError for a malformed evaluator config."""
  where = f"evals.{name}"
  if not isinstance(ev, ml_collections.ConfigDict) or "type" not in ev:
    raise ConfigError(f"{where} must be a group with a 'type' ({' | '.join(TYPES)}); "
                      f"build it with vlmjax.evals.defaults")
  if ev.type not in TYPES:
    raise ConfigError(f"{where}.type={ev.type!r} is unknown; valid: {', '.join(TYPES)}")
  keys = set(ev.keys())
  missing, extra = FIELDS[ev.type] - keys, keys - FIELDS[ev.type]
  if missing or extra:
    raise ConfigError(f"{where} ({ev.type}): missing {sorted(missing)}, unknown {sorted(extra)}; "
                      f"valid keys: {', '.join(sorted(FIELDS[ev.type]))}")
  if set(ev.data.keys()) != {"source", "data_dir"}:
    raise ConfigError(f"{where}.data must have exactly 'source' (e.g. synthetic:shapes:validation) and "
                      f"'data_dir', got {sorted(ev.data.keys())}")
  if ev.image_mode not in IMAGE_MODES:
    raise ConfigError(f"{where}.image_mode={ev.image_mode!r} is unknown; valid: {', '.join(IMAGE_MODES)}")
  for key in ("batch_size",):
    if not isinstance(ev[key], int) or ev[key] <= 0:
      raise ConfigError(f"{where}.{key} must be a positive int, got {ev[key]!r}")
  for key in ("every", "num_examples"):
    if not isinstance(ev[key], int) or ev[key] < 0:
      raise ConfigError(f"{where}.{key} must be an int >= 0, got {ev[key]!r}")
  if ev.type == "retrieval":
    ks = ev.ks if isinstance(ev.ks, (tuple, list)) else (ev.ks,)
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
      raise ConfigError(f"{where}.ks={ev.ks!r} must be a tuple of ints >= 1, e.g. (1, 5, 10)")
  if ev.type == "captioning":
    if ev.method not in ("greedy", "beam", "sample"):
      raise ConfigError(f"{where}.method={ev.method!r} is unknown; valid: greedy, beam, sample")
    check_decoding(where, max_len=ev.max_len, beam_size=ev.beam_size, top_k=ev.top_k, top_p=ev.top_p,
                   temperature=ev.temperature)


def check_decoding(where: str, *, max_len, beam_size, top_k, top_p, temperature, vocab_size: int | None = None,
                   prefix: str = ".") -> None:
  """One-line ConfigError for decoding settings out of range (evaluators and `vlmjax caption`)."""
  limits = [("max_len", max_len, max_len > 0, "> 0"), ("beam_size", beam_size, beam_size > 0, "> 0"),
            ("top_k", top_k, top_k >= 0 and (vocab_size is None or top_k <= vocab_size),
             ">= 0" + (f" and <= the vocabulary ({vocab_size})" if vocab_size else "")),
            ("top_p", top_p, 0 < top_p <= 1, "in (0, 1]"), ("temperature", temperature, temperature > 0, "> 0")]
  for name, value, ok, valid in limits:
    if not ok:
      shown = f"--{name.replace('_', '-')}" if prefix == "--" else f"{where}.{name}"
      raise ConfigError(f"{shown}={value!r} is out of range; it must be {valid}")


def due(evals: ml_collections.ConfigDict, step: int, final: bool = False, every: int = 0) -> list[str]:
  """Names of the evaluators that run at `step`: all of them at the last step (`final`) and at
  multiples of the run's `eval_every` (`every`; 0: none), and each at multiples of its own `every`."""
  return [name for name in evals.keys()
          if final or (every > 0 and step % every == 0) or (evals[name].every > 0 and step % evals[name].every == 0)]
