"""A run's working directory: its resolved config.json, the checks before resuming in it, and
bringing a config.json written by an older vlmjax up to date.

    WORKDIR/config.json     the resolved config (`prepare`; read back by `read_config`); passed
                            to `vlmjax train --config`, it relaunches the run as it was
    WORKDIR/run.json        provenance, one entry per launch (`record_launch`): git commit and
                            dirty flag, package versions, argv, devices, processes, start time
    WORKDIR/log.txt         the console of every launch, appended (`console.Tee`, process 0)
    WORKDIR/lock.json       who trains here now (`Lock`: pid, host, start time, argv), flock-ed
    WORKDIR/metrics.jsonl   one strict-JSON object per logged step (`metrics.Writer`)
    WORKDIR/checkpoints/    orbax steps (`checkpoint.Checkpointer`)
    WORKDIR/tb/             TensorBoard
    WORKDIR/eval/STEP.json  `vlmjax eval` results

Running `vlmjax train` again on a workdir resumes it: `check_resume` refuses settings that
must not change (the model, the data order), and notes the others.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata

import jax
import ml_collections

from vlmjax import config
from vlmjax.errors import ConfigError, one_line


def prepare(cfg: ml_collections.ConfigDict, workdir: str, *, resuming: bool) -> "Lock | None":
  """Makes `workdir` (a local or mounted path), takes its lock (process 0; see `Lock`), checks a
  resumed run's settings against its config.json, and writes the resolved config there (process 0).
  Returns the lock, for the caller to release when the run ends."""
  if "://" in workdir:
    raise ConfigError(f"--workdir {workdir!r}: use a path on this machine or on storage every host mounts "
                      "(NFS, Lustre, a bucket through gcsfuse); config.json, metrics.jsonl and TensorBoard "
                      "are written as local files")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot use --workdir {workdir!r}: {e.strerror or e}") from None
  lock = Lock(workdir) if jax.process_index() == 0 else None  # the hosts of one run: the primary's
  try:
    if resuming:
      check_resume(cfg, workdir)
    if jax.process_index() == 0:
      try:
        config.dump(cfg, os.path.join(workdir, "config.json"))
      except OSError as e:
        raise ConfigError(f"cannot write {os.path.join(workdir, 'config.json')}: {e.strerror or e}") from None
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


class Lock:
  """One training run per workdir: an exclusive `flock` on WORKDIR/lock.json, which names its holder.

  A second `vlmjax train` on the workdir is refused in one line naming the holder (pid, host, start
  time, command). The kernel releases the lock when its process ends, however it ends, so a dead
  holder's lock is taken over with no stale-lock check. On a filesystem without working locks
  across hosts (gcsfuse), only runs on one machine are kept apart.
  """

  def __init__(self, workdir: str):
    import fcntl  # noqa: PLC0415 (POSIX)
    self.path = os.path.join(workdir, "lock.json")
    try:
      self.file = open(self.path, "a+")
    except OSError as e:
      raise ConfigError(f"cannot write {self.path}: {e.strerror or e}") from None
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self._holder(self.file.read())
      self.file.close()
      raise ConfigError(f"{workdir} is in use by another run ({holder}); wait for it to end or stop it, "
                        "or train in another --workdir") from None
    except OSError:  # no locks on this filesystem: go on unlocked
      pass
    try:
      self.file.seek(0)
      self.file.truncate()
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv,
                 "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, self.file)
      self.file.flush()
    except OSError as e:  # a full disk, say
      self.release()
      raise ConfigError(f"cannot write {self.path}: {e.strerror or e}") from None

  @staticmethod
  def _holder(text: str) -> str:
    try:
      h = json.loads(text)
      return f"pid {h['pid']} on {h['host']} since {h['start_time']}: {' '.join(h['argv'])}"
    except (ValueError, KeyError, TypeError):
      return "holder unknown"

  def release(self) -> None:
    if not self.file.closed:
      try:
        self.file.close()  # closing releases the flock; the file stays, naming the last holder
      except OSError:  # its last write failed (a full disk): the descriptor is closed all the same
        pass


# Settings a resumed run must share with the run that wrote its checkpoints: the model and what
# it trains (the checkpoint's shapes), and the data order (the saved iterator position means
# nothing in another order). Everything else (total_steps, intervals, evals, mesh, ...) may change.
RESUME_FIXED = ("optim.freeze", "seed", "batch_size", "data.train.source",  # and every model.* key
                "data.train.shuffle_buffer")  # the saved position is a place in windows of this size
# Model keys that change how a step trains, not what a checkpoint holds: free to change on resume
# (a short unmasked fine-tune after FLIP pretraining is `--config.model.vision.patch_dropout=0`).
RESUME_FREE = ("model.vision.patch_dropout",)


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
  fixed = {k: v for k, v in changed.items()
           if (k.startswith("model.") and k not in RESUME_FREE) or k in RESUME_FIXED}
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
  return read_config_file(path)


def read_config_file(path: str) -> ml_collections.ConfigDict:
  """A resolved config.json (any path), brought up to date; not validated."""
  try:
    with open(path) as f:
      tree = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"cannot read {path}: {one_line(e)}; running the training "
                      "command on its workdir again rewrites it") from None
  if not isinstance(tree, dict) or "model" not in tree:
    raise ConfigError(f"{path} is not a vlmjax config.json (a run's resolved config, with a 'model' group)")
  cfg = ml_collections.ConfigDict(tree)
  add_stored_defaults(cfg)
  return cfg


# Fields added after a workdir's config.json may have been written, with the value that reproduces
# what that older vlmjax did (not always today's default).
OLD_BEHAVIOUR = {"model.text.pad_id": 0, "optim.lr_mult": "", "model.vision.patch_dropout": 0.0,
                 "optim.ema_decay": 0.0, "optim.microbatches": 1, "data.train.max_patches": 0,
                 "data.train.budgets": (), "data.train.normalize": "clip", "data.train.pack": False, "data.train.pack_length": 0, "data.train.pack_rows": 0,
                 "data.train.locca": {"cap": 0.0, "ref": 0.0, "gcap": 0.0, "box_bins": 100}}
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


PACKAGES = ("vlmjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml-collections",
            "tensorflow-datasets", "array-record", "tokenizers", "sentencepiece")


def git_state(package_dir: str) -> dict | None:
  """{"commit", "dirty"} of the git checkout whose top level holds `package_dir` (the vlmjax source
  of an editable install), or None: an installed package (even in a venv inside a checkout), no git."""
  def git(*args: str) -> str:
    return subprocess.run(["git", "-C", package_dir, *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()
  try:
    top = git("rev-parse", "--show-toplevel")
    if os.path.realpath(os.path.join(top, os.path.basename(package_dir))) != os.path.realpath(package_dir):
      return None
    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def launch_record(argv: list[str] | None = None, resumed_from: int = 0) -> dict:
  """What one launch ran on and with: see the module docstring (`run.json`)."""
  devices = jax.devices()
  return {
      "start_time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "argv": list(sys.argv if argv is None else argv),
      "cwd": os.getcwd(),
      "host": socket.gethostname(),
      "git": git_state(os.path.dirname(os.path.abspath(__file__))),
      "versions": versions(),
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "resumed_from_step": resumed_from,
  }


def record_launch(workdir: str, resumed_from: int = 0, argv: list[str] | None = None) -> dict:
  """Appends this launch to `workdir/run.json` (process 0; written whole, then renamed into place)."""
  record = launch_record(argv, resumed_from)
  if jax.process_index() != 0:
    return record
  path = os.path.join(workdir, "run.json")
  launches = []
  if os.path.isfile(path):
    try:
      with open(path) as f:
        launches = list(json.load(f)["launches"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      print(f"cannot read {path} ({one_line(e)}); starting it anew with this launch", flush=True)
  try:
    with open(path + ".tmp", "w") as f:
      json.dump({"launches": launches + [record]}, f, indent=2)
      f.write("\n")
    os.replace(path + ".tmp", path)
  except OSError as e:
    raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
  return record
