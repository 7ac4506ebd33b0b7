"""A run's working directory: its resolved config.json, the checks before resuming in it, and
bringing a config.json written by an older vlmjax up to date.

    WORKDIR/config.json     the resolved config (`write_config`; read back by `read_config`)
    WORKDIR/metrics.jsonl   one JSON object per logged step (`metrics.Writer`)
    WORKDIR/checkpoints/    orbax steps (`checkpoint.Checkpointer`)
    WORKDIR/tb/             TensorBoard
    WORKDIR/eval/STEP.json  `vlmjax eval` results

Running `vlmjax train` again on a workdir resumes it: `check_resume` refuses settings that
must not change (the model, the data order), and notes the others.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from vlmjax import config
from vlmjax.errors import ConfigError, one_line


def prepare(cfg: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> None:
  """Makes `workdir` (a local or mounted path), checks a resumed run's settings against its
  config.json, and writes the resolved config there (process 0)."""
  if "://" in workdir:
    raise ConfigError(f"--workdir {workdir!r}: use a path on this machine or on storage every host mounts "
                      "(NFS, Lustre, a bucket through gcsfuse); config.json, metrics.jsonl and TensorBoard "
                      "are written as local files")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot use --workdir {workdir!r}: {e.strerror or e}") from None
  if resuming:
    check_resume(cfg, workdir)
  if jax.process_index() == 0:
    try:
      config.dump(cfg, os.path.join(workdir, "config.json"))
    except OSError as e:
      raise ConfigError(f"cannot write {os.path.join(workdir, 'config.json')}: {e.strerror or e}") from None


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
    print(f"cannot read {path} ({one_line(e)}); resuming without comparing settings, and rewriting it")
    return
  now = _flat(json.loads(cfg.to_json_best_effort()))
  changed = {k: (stored[k], now[k]) for k in sorted(stored.keys() & now.keys()) if stored[k] != now[k]}
  fixed = {k: v for k, v in changed.items() if k.startswith("model.") or k in RESUME_FIXED}
  if fixed:
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(fixed.items())[:4])
    more = f" (and {len(fixed) - 4} more)" if len(fixed) > 4 else ""
    raise ConfigError(f"{workdir} holds checkpoints of another setup: {shown}{more}; resume with the "
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


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote (`config.json`), brought up to date (`add_stored_defaults`);
  not validated: the caller applies its overrides first."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"{path} does not exist; is {workdir!r} a vlmjax workdir?")
  try:
    with open(path) as f:
      cfg = ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path}: {one_line(e)}; running the training "
                      "command on this workdir again rewrites it") from None
  add_stored_defaults(cfg)
  return cfg


# Fields added after a workdir's config.json may have been written, with the value that reproduces
# what that older vlmjax did (not always today's default).
OLD_BEHAVIOUR = {"model.text.pad_id": 0, "optim.lr_mult": ""}
OLD_TOWER_KINDS = {"vision": "vit", "text": "transformer"}  # towers (groups with a width) before `kind`


def add_stored_defaults(cfg: ml_collections.ConfigDict) -> None:
  """Brings a config.json written by an older vlmjax up to date, so old workdirs stay evaluable:
  keys added since get the value that keeps their old behaviour. (Evaluators gain their new fields
  in `vlmjax.evals`.) Anything else malformed is left to `config.validate`."""
  fresh = config.base(batch_size=1, total_steps=1)
  for key in fresh.keys():
    if key not in cfg:
      cfg[key] = fresh[key]
  for dotted, value in OLD_BEHAVIOUR.items():
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
      node = node[part] if isinstance(node, ml_collections.ConfigDict) and part in node else None
    if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
      node[leaf] = value
  for tower, kind in OLD_TOWER_KINDS.items():
    group = cfg.model[tower] if "model" in cfg and tower in cfg.model else None
    if isinstance(group, ml_collections.ConfigDict) and "width" in group and "kind" not in group:
      group.kind = kind
