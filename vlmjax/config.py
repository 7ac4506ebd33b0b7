"""Experiment configs: load `FILE[:k=v,...]`, apply `--config.a.b=v` overrides, validate, dump.

A config file defines `get_config(arg)` returning an `ml_collections.ConfigDict`;
`arg` is the text after the first `:` in the spec (or None). Configs use
`parse_arg(arg, **defaults)` to read it. Every user mistake raises `ConfigError`
with a one-line message; the command line turns it into exit status 2.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import traceback
from typing import Any, Iterator, Sequence

import ml_collections

from vlmjax.errors import ConfigError, one_line

REQUIRED_KEYS = (
    "seed", "batch_size", "total_steps", "log_every", "eval_every", "ckpt_every",
    "model", "loss", "optim", "mesh", "data.train", "evals",
)
POSITIVE_INT_KEYS = ("batch_size", "total_steps", "log_every", "ckpt_every")


def load_python_file(path: str, kind: str, function: str):
  """Imports a config-like Python file by path; returns its `function`. `kind` names it in errors."""
  if not os.path.isfile(path):
    raise ConfigError(f"{kind} file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      f"vlmjax_{kind}_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{kind} file {path!r} has a syntax error at line {e.lineno}: {e.msg}") from None
  except ConfigError:
    raise
  except Exception as e:  # noqa: BLE001 -- the user's code: any failure is theirs to fix, in one line
    raise code_error(path, kind, e) from None
  if not hasattr(module, function):
    raise ConfigError(f"{kind} file {path!r} defines no {function}() function")
  fn = getattr(module, function)

  def call(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001
      raise code_error(path, kind, e, f"{function}() ") from None
  return call


def code_error(path: str, kind: str, e: BaseException, where: str = "") -> ConfigError:
  """A ConfigError for an exception raised by the code of a config-like file: the file, the line of
  that file nearest the failure, and the exception."""
  line = None
  for frame, lineno in traceback.walk_tb(e.__traceback__):
    if os.path.abspath(frame.f_code.co_filename) == os.path.abspath(path):
      line = lineno
  at = f" at line {line}" if line else ""
  return ConfigError(f"{kind} file {path!r} {where}failed{at}: {one_line(e)}")


def load(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """Loads `FILE[:arg]`, applies `(dotted.key, raw_value)` overrides and validates."""
  path, _, arg = spec.partition(":")
  cfg = load_python_file(path, "config", "get_config")(arg or None)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"get_config in {path!r} returned {type(cfg).__name__}, expected ml_collections.ConfigDict")
  for key, raw in overrides:
    apply_override(cfg, key, raw)
  validate(cfg)
  return cfg


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument `k=v,k2=v2` against typed defaults."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    key, eq, raw = item.partition("=")
    if not eq:
      raise ConfigError(f"config argument {item!r} is not of the form key=value (valid keys: {', '.join(defaults)})")
    apply_override(out, key.strip(), raw.strip(), where="config argument")
  return out


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
  for key in cfg.keys():
    value = cfg[key]
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from flat_keys(value, prefix + key + ".")


def apply_override(cfg: ml_collections.ConfigDict, dotted: str, raw: str, where: str = "override") -> None:
  """Sets `cfg.<dotted>` from the string `raw`, parsed to the existing value's type."""
  *parents, leaf = dotted.split(".")
  node = cfg
  for part in parents + [leaf]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(dotted, list(flat_keys(cfg)), n=3, cutoff=0.6)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"{where}: unknown config key {dotted!r}{hint}")
    parent, node = node, node[part]
  node = parent
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"{where}: {dotted!r} is a group of keys ({', '.join(current.keys())}); set one of them")
  if dotted.startswith("mesh.rules."):  # a mesh axis, a tuple of them, or None: any of the three may replace another
    value = parse_rule(raw, dotted, where)
    del node[leaf]
  else:
    value = parse_value(raw, current, dotted, where)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: bad value {raw!r} for {dotted!r}: {e}") from None


MESH_AXES = ("data", "fsdp", "tensor")


def parse_rule(raw: str, key: str, where: str) -> str | tuple[str, ...] | None:
  """A logical-axis rule from the command line: `None`, `fsdp`, or `data,fsdp` / `(data, fsdp)`."""
  text = raw.strip().strip("()[]").replace("'", "").replace('"', "")
  if text.lower() in ("", "none"):
    return None
  axes = tuple(a.strip() for a in text.split(",") if a.strip())
  bad = [a for a in axes if a not in MESH_AXES]
  if bad or len(set(axes)) != len(axes):
    raise ConfigError(f"{where}: {key}={raw!r} is not a mesh axis, a tuple of distinct mesh axes, or None; "
                      f"mesh axes: {', '.join(MESH_AXES)}")
  return axes if "," in text else axes[0]  # `data` an axis, `(data,)` a tuple of one


def parse_value(raw: str, current: Any, key: str, where: str) -> Any:
  """Parses `raw` to the type of `current` (None accepts any Python literal or a string)."""
  def bad(expected: str) -> ConfigError:
    return ConfigError(f"{where}: {key}={raw!r} is not a valid {expected} (current value {current!r})")

  if isinstance(current, bool):
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise bad("bool (true/false)")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      raise bad("int") from None
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      raise bad("float") from None
  if isinstance(current, str):
    return raw
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = tuple(v.strip() for v in raw.split(",")) if raw else ()
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return type(current)(value)
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Numbers a run cannot use, found before anything is built: (key, test, what a valid value is).
# A key an older config.json lacks is not checked.
NUMBER_RULES = (
    ("seed", lambda v: _int(v) and v >= 0, "an int >= 0"),
    ("ckpt_keep_every", lambda v: _int(v) and v >= 0, "an int >= 0 (0: keep only the last ckpt_keep)"),
    ("nan_max_skips", lambda v: _int(v) and v >= 1, "an int >= 1"),
    ("optim.lr", lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    ("optim.warmup_steps", lambda v: _int(v) and v >= 0, "an int >= 0"),
    ("optim.end_lr_ratio", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("optim.b1", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optim.b2", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optim.eps", lambda v: _num(v) and v > 0, "a finite number > 0"),
    ("optim.weight_decay", lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    ("optim.grad_clip", lambda v: _num(v) and v >= 0, "a finite number >= 0 (0: no clipping)"),
    ("optim.ema_decay", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1) (0: no EMA of the parameters)"),
    ("optim.microbatches", lambda v: _int(v) and v >= 1, "an int >= 1 (1: the whole batch in one pass)"),
    ("data.train.crop_min_scale", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("data.train.max_skip_fraction", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    ("data.train.num_threads", lambda v: _int(v) and v >= 1, "an int >= 1"),
    ("data.train.prefetch", lambda v: _int(v) and v >= 0, "an int >= 0"),
    ("data.train.shuffle_buffer", lambda v: _int(v) and v >= 0, "an int >= 0 (0: no shuffling)"),
    ("data.train.max_patches", lambda v: _int(v) and v >= 0,
     "an int >= 0 (0: square images; > 0: NaFlex batches of at most this many patches per image)"),
    ("data.train.normalize", lambda v: v in NORMALIZATIONS,
     "one of clip, siglip, imagenet (the pixel mean and std the model's weights expect)"),
    ("data.train.budgets", lambda v: isinstance(v, (tuple, list)) and all(_int(b) and b >= 1 for b in v)
     and len(set(v)) == len(v), "a tuple of distinct ints >= 1 (patch budgets drawn per batch; (): max_patches)"),
    ("data.train.pack", lambda v: isinstance(v, bool), "true or false (NaFlex: pack several images per sequence)"),
    ("data.train.pack_length", lambda v: _int(v) and v >= 0, "an int >= 0 (tokens per packed sequence; 0: 4 * max_patches)"),
    ("data.train.pack_rows", lambda v: _int(v) and v >= 0,
     "an int >= 0 (packed sequences per batch; 0: the unpacked batch's tokens)"),
)


def check_data_dir(value: str, source, key: str) -> None:
  """`data_dir` is read by tfds: sources only; set for others it is a mistake, not silently ignored."""
  if value and "tfds:" not in str(source):
    raise ConfigError(f"{key}={value!r} is read by tfds: sources only, and {key.rpartition('.')[0]}.source="
                      f"{source!r} has none; set it to '' (or use a tfds:NAME source)")


def validate(cfg: ml_collections.ConfigDict) -> None:
  keys = set(flat_keys(cfg))
  for key in REQUIRED_KEYS:
    if key not in keys:
      raise ConfigError(f"config is missing required key {key!r}")
  for key in POSITIVE_INT_KEYS:
    if not isinstance(cfg[key], int) or cfg[key] <= 0:
      raise ConfigError(f"config key {key!r} must be a positive int, got {cfg[key]!r}")
  for key, test, what in NUMBER_RULES:
    if key in keys and not test(_get(cfg, key)):
      raise ConfigError(f"{key}={_get(cfg, key)!r} must be {what}")
  if "data.train.data_dir" in keys:
    check_data_dir(cfg.data.train.data_dir, cfg.data.train.source, "data.train.data_dir")
  if not isinstance(cfg.eval_every, int) or cfg.eval_every < 0:
    raise ConfigError(f"eval_every={cfg.eval_every!r} must be an int >= 0 (0: evaluate at the last step only)")
  if cfg.optim.warmup_steps >= cfg.total_steps:
    raise ConfigError(f"optim.warmup_steps={cfg.optim.warmup_steps} must be less than total_steps="
                      f"{cfg.total_steps} (the cosine decay needs at least one step)")
  if not isinstance(cfg.ckpt_keep, int) or cfg.ckpt_keep < 1:
    raise ConfigError(f"ckpt_keep={cfg.ckpt_keep!r} must be an int >= 1 (the latest checkpoints kept; "
                      f"ckpt_keep_every keeps more)")
  for name in cfg.mesh.rules.keys():  # rules written in a config file
    rule = cfg.mesh.rules[name]
    axes = () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)
    if any(a not in MESH_AXES for a in axes):
      raise ConfigError(f"mesh.rules.{name}={rule!r} names an axis that is not a mesh axis "
                        f"({', '.join(MESH_AXES)}), a tuple of them, or None")
  if "wandb" in cfg and cfg.wandb.mode not in WANDB_MODES:
    raise ConfigError(f"wandb.mode={cfg.wandb.mode!r} is unknown; valid: {', '.join(map(repr, WANDB_MODES))} "
                      f"('': wandb's default or WANDB_MODE)")


def _get(cfg: ml_collections.ConfigDict, dotted: str):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


def dump(cfg: ml_collections.ConfigDict, path: str) -> None:
  with open(path, "w") as f:
    f.write(json.dumps(json.loads(cfg.to_json_best_effort()), indent=2, sort_keys=True) + "\n")


WANDB_MODES = ("", "online", "offline")
NORMALIZATIONS = ("clip", "siglip", "imagenet")  # `data.train.normalize`: the tables of vlmjax/data/transforms.py


def base(*, batch_size: int, total_steps: int) -> ml_collections.ConfigDict:
  """Run, optimiser, mesh and data defaults shared by configs; each config sets `model` and `loss`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.log_every = 50
  c.eval_every = 0            # run every evaluator at multiples of this step (0: only at the last step);
                              # `evals.<name>.every` adds an evaluator's own interval
  c.ckpt_every = 1000
  c.ckpt_keep = 3             # keep the latest N checkpoints ...
  c.ckpt_keep_every = 0       # ... and every K-th step (0: none)
  c.nan_policy = "skip"       # non-finite loss/gradient: skip (drop the update) | halt (exit non-zero)
  c.nan_max_skips = 5         # under `skip`, halt after this many non-finite steps in a row
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=min(10_000, total_steps // 5), end_lr_ratio=0.0, b1=0.9, b2=0.98,
      eps=1e-6, weight_decay=0.1, grad_clip=1.0, freeze="", lr_mult="",
      ema_decay=0.0,            # an EMA of the parameters (e.g. 0.9999; 0: none), for evals.<name>.params="ema"
      microbatches=1))          # k > 1: each step in k microbatches, the exact global-batch gradient (GradCache)
  c.init_from = ""            # start from converted weights (vlmjax convert --out DIR) or a run (RUN: its latest
                              # step, RUN:STEP) instead of random; learned position embeddings are resized
  c.init_reinit = ""          # ... but keep these parameter path prefixes freshly initialised
  # XLA compiler options for the train step, per platform: "name=value,name=value" (see
  # `vlmjax/xla_options.py`). Empty until a measurement justifies one; scripts/bench_step.py --ab times them.
  c.xla_options = ml_collections.ConfigDict(dict(cpu="", gpu="", tpu=""))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.mesh.rules = ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"), embed="fsdp", mlp="tensor", heads="tensor", vocab="tensor", patch=None,
      layers=None))
  c.data = ml_collections.ConfigDict()
  c.data.train = ml_collections.ConfigDict(dict(
      source="synthetic:shapes",  # a spec (see vlmjax/data/sources.py) or "{spec: weight, ...}" to mix
      data_dir="",                # TFDS data_dir for tfds: specs ("": TFDS's default)
      tokenizer="bytes",          # bytes | sentencepiece:MODEL | hf:TOKENIZER_JSON
      num_threads=2,              # decode threads per host
      prefetch=4,                 # batches prepared ahead
      shuffle_buffer=2000,        # window shuffle for streamed (tar) sources
      image_mode="resize",        # resize | center_crop | random_resized_crop
      crop_min_scale=0.9,         # smallest area fraction of a random_resized_crop
      max_skip_fraction=0.1,      # stop when more samples than this are unreadable
      normalize="clip",           # pixel mean/std: clip | siglip ((x - 0.5) / 0.5) | imagenet (transforms.NORMALIZE)
      max_patches=0,              # NaFlex (model.vision.kind=naflex): > 0 gives each image at its aspect ratio
                                  # on a grid of at most this many patches (vlmjax/data/naflex.py); 0: squares
      budgets=(),                 # NaFlex: patch budgets, one drawn per batch (SigLIP 2's several sequence
                                  # lengths; one compiled step each); (): max_patches alone
      pack=False,                 # NaFlex: several images share each sequence (less padding)
      pack_length=0,              # packed: tokens per sequence (0: 4 * max_patches)
      pack_rows=0,                # packed: sequences per global batch (0: batch_size * max_patches / pack_length)
      # LocCa's decoder tasks (vlmjax/data/locca.py), drawn per example by these weights; all 0: the
      # decoder (if any) captions the training text as before. ref/gcap need records with regions.
      locca=ml_collections.ConfigDict(dict(cap=0.0, ref=0.0, gcap=0.0, box_bins=100))))
  c.evals = ml_collections.ConfigDict()
  # Weights & Biases, besides metrics.jsonl and TensorBoard: off while `project` is "". A resumed
  # run continues the same wandb run (its id is kept in the workdir's wandb.json).
  c.wandb = ml_collections.ConfigDict(dict(project="", entity="", name="", mode=""))  # mode: online | offline
  return c
