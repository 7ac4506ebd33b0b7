"""`vlmjax data convert` to ArrayRecord: tar shards in parallel worker processes, resumable.

Every shard of a `tar:PATTERN` spec becomes its own file(s) `STEM-00000-of-0000N.array_record`
(STEM: the shard's file name without its extension, or `00003-STEM` numbered in shard order when
two shards share a name; more than `per_file` examples make several files), its examples in
source order, written by `workers` processes (this one and spawned workers). Any other spec is
one unit, `data`, converted in this process. Files are written under temporary names and renamed when complete;
`DIR/convert_state.json` records the spec and every finished unit (its files, examples written,
records skipped), so a rerun skips finished units, redoes the others (removing their partial
files), and refuses a DIR that holds a conversion of another spec.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import threading
import time

from vlmjax import progress
from vlmjax.data import records as rec_lib
from vlmjax.data import sources, tar_stream
from vlmjax.errors import ConfigError, DataError

STATE = "convert_state.json"


@dataclasses.dataclass(frozen=True)
class Unit:
  """What one job converts: a tar shard (or the whole spec of a non-sharded source) -> files NAME-*."""
  key: str
  name: str


class ShardProgress(progress.Counter):
  """Shards done (rate, ETA) and the examples they held."""

  examples = 0

  def line(self, now: float | None = None) -> str:
    elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
    return f"{super().line(now)}; {self.examples:,} examples written ({self.examples / elapsed:,.1f}/s)"


def shard_units(paths: list[str]) -> list[Unit]:
  """One unit per shard, named after the shard file (numbered in shard order when two names clash)."""
  stems = [re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(os.path.basename(p.split("?")[0]))[0]).lstrip(".")
           or "shard" for p in paths]
  unique = len(set(stems)) == len(stems)
  return [Unit(p, s if unique else f"{i:05d}-{s}") for i, (p, s) in enumerate(zip(paths, stems))]


def usable(records, counts: dict, on_example=None):
  """The records worth writing ({"key", "image" (bytes), "caption", optional "captions" and "regions"}),
  counting written examples and skip markers in `counts`. A record with bad regions (the marker of
  `vlmjax.data.regions`) is skipped: written without them, it would claim an image without regions."""
  from vlmjax.data import regions, transforms
  for rec in records:
    counts["skipped"] += len(rec.get("_skips", ()))
    image, caption = rec.get("image"), rec.get("caption")
    if image is None or not caption:
      continue
    if rec.get(regions.BAD_KEY):
      counts["skipped"] += 1
      continue
    if not isinstance(image, bytes):
      image = transforms.encode_png(image)
    counts["written"] += 1
    if on_example is not None:
      on_example()
    captions = [c for c in rec.get("captions") or () if c]  # every caption of a multi-caption set
    yield {"key": rec["key"], "image": image, "caption": caption, **({"captions": captions} if captions else {}),
           **({"regions": rec["regions"]} if rec.get("regions") is not None else {})}


def _shard_records(path: str, counts: dict):
  """The raw records of one tar shard in order; a shard without a readable sample only adds its skips."""
  it = iter(tar_stream.TarStream([path], seed=0, shuffle_shards=False, repeat=False))
  try:
    yield from it
  except DataError:  # raised before any record of the shard: nothing of it was written
    counts["skipped"] += len(getattr(it, "_skips", ())) or 1
  finally:
    it.close()


def convert_shard(path: str, name: str, out_dir: str, per_file: int) -> dict:
  """Converts one tar shard (in a worker process): {"files", "written", "skipped"}."""
  counts = {"written": 0, "skipped": 0}
  paths = rec_lib.write_arrayrecord(usable(_shard_records(path, counts), counts), out_dir, name=name,
                                    per_file=per_file)
  return {"files": [os.path.basename(p) for p in paths], **counts}


# --- the state file ---------------------------------------------------------------------------------

def _save_state(out_dir: str, state: dict) -> None:
  tmp = os.path.join(out_dir, f".{STATE}.tmp")
  with open(tmp, "w") as f:
    json.dump(state, f, indent=1)
  os.replace(tmp, os.path.join(out_dir, STATE))


def load_state(out_dir: str, spec: str) -> dict:
  """The state of a conversion of `spec` in `out_dir` (a new one when there is none); a one-line
  ConfigError when `out_dir` holds a conversion of another spec or ArrayRecord files of its own."""
  path = os.path.join(out_dir, STATE)
  if os.path.exists(path):
    try:
      with open(path) as f:
        state = json.load(f)
      done = state["done"]
    except (OSError, ValueError, KeyError, TypeError):
      raise ConfigError(f"{path} is unreadable; remove --out {out_dir!r} (or that file) to start over") from None
    if state.get("spec") != spec or not isinstance(done, dict):
      raise ConfigError(f"--out {out_dir!r} holds a conversion of {state.get('spec')!r}, not {spec!r}; "
                        "choose another --out (or remove it to start over)")
    return state
  os.makedirs(out_dir, exist_ok=True)
  foreign = sorted(f for f in os.listdir(out_dir) if f.endswith(".array_record"))
  if foreign:
    raise ConfigError(f"--out {out_dir!r} already holds {len(foreign)} ArrayRecord file(s) (e.g. {foreign[0]!r}) "
                      f"but no {STATE}; choose an empty directory")
  state = {"spec": spec, "format": "arrayrecord", "done": {}}
  _save_state(out_dir, state)
  return state


def pending(units: list[Unit], state: dict, out_dir: str) -> list[Unit]:
  """The units not finished (or whose files are gone), their partial files removed."""
  todo = []
  for unit in units:
    entry = state["done"].get(unit.key)
    if entry and all(os.path.exists(os.path.join(out_dir, f)) for f in entry["files"]):
      continue
    state["done"].pop(unit.key, None)
    name = re.escape(unit.name)
    partial = re.compile(rf"(\.{name}-\d{{5}}\.tmp|{name}-\d{{5}}-of-\d{{5}}\.array_record)")
    for f in os.listdir(out_dir):
      if partial.fullmatch(f):
        os.remove(os.path.join(out_dir, f))
    todo.append(unit)
  return todo


def _finish(state: dict, unit: Unit, result: dict, out_dir: str, bar: ShardProgress) -> None:
  state["done"][unit.key] = {"name": unit.name, **result}
  _save_state(out_dir, state)
  bar.examples += result["written"]
  bar.update(1)


# --- running ------------------------------------------------------------------------------------------

def _worker_init() -> None:
  """Ctrl-C ends a worker at once (a partial file is removed by the rerun) rather than after its shards."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ready() -> None:
  """A worker's first job: done once the worker has started and imported this module."""


def _start(pool, size: int) -> dict:
  """Starts the workers (one per first job) with Ctrl-C ignored until `_worker_init`: no traceback from a
  worker interrupted while it imports."""
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
  try:
    return {pool.submit(_ready): None for _ in range(size)}
  finally:
    if main:
      signal.signal(signal.SIGINT, previous)


def _run_pool(todo: list[Unit], state: dict, out_dir: str, per_file: int, workers: int, bar) -> None:
  """`workers - 1` spawned processes, each given shards from the front two at a time once it has
  started, and this process, converting shards from the back meanwhile."""
  queue, running, size = collections.deque(todo), {}, min(workers, len(todo)) - 1
  pool = concurrent.futures.ProcessPoolExecutor(max_workers=size, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init)

  def give(n: int) -> None:
    for _ in range(min(n, len(queue))):
      unit = queue.popleft()
      running[pool.submit(convert_shard, unit.key, unit.name, out_dir, per_file)] = unit

  try:
    running.update(_start(pool, size))
    while queue or any(running.values()):
      for job in [j for j in running if j.done()]:
        unit, result = running.pop(job), job.result()
        if unit is not None:
          _finish(state, unit, result, out_dir, bar)
        give(1 if unit is not None else 2)
      if queue:
        unit = queue.pop()
        _finish(state, unit, convert_shard(unit.key, unit.name, out_dir, per_file), out_dir, bar)
      elif any(running.values()):
        concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
  finally:  # on an error, workers finish the (at most two) shards they hold; cancelling races a broken pool
    pool.shutdown(wait=True)


def _run_shards(todo: list[Unit], state: dict, out_dir: str, per_file: int, workers: int) -> None:
  bar = ShardProgress(f"converting to {out_dir}", total=len(todo), unit="shards")
  if workers <= 1 or len(todo) <= 1:
    for unit in todo:
      _finish(state, unit, convert_shard(unit.key, unit.name, out_dir, per_file), out_dir, bar)
  else:
    _run_pool(todo, state, out_dir, per_file, workers, bar)
  bar.close()


def _run_source(src, unit: Unit, state: dict, out_dir: str, per_file: int) -> None:
  total = len(src) if hasattr(src, "__len__") else None
  bar = progress.Counter(f"converting to {out_dir}", total=total, unit="examples")
  counts = {"written": 0, "skipped": 0}
  records = usable(sources.records_of(src), counts, on_example=bar.update)
  paths = rec_lib.write_arrayrecord(records, out_dir, name=unit.name, per_file=per_file)
  bar.close()
  state["done"][unit.key] = {"name": unit.name, "files": [os.path.basename(p) for p in paths], **counts}
  _save_state(out_dir, state)


def convert(spec: str, out_dir: str, *, per_file: int = 10_000, workers: int = 1,
            data_dir: str | None = None) -> dict:
  """Converts `spec` to ArrayRecord files in `out_dir`, resuming a conversion there; the totals of the
  whole conversion {"files", "written", "skipped", "units", "resumed"}."""
  src = sources.open_source(spec, mode="scan", image_size=64, data_dir=data_dir)
  sharded = isinstance(src, tar_stream.TarStream)
  units = shard_units(src.paths) if sharded else [Unit(spec, "data")]
  state = load_state(out_dir, spec)
  todo = pending(units, state, out_dir)
  resumed = len(units) - len(todo)
  if sharded:
    if not todo:
      print(f"all {len(units)} tar shard(s) already converted", flush=True)
    else:
      print(f"converting {f'{len(todo)} of ' if resumed else ''}{len(units)} tar shard(s) with "
            f"{min(workers, len(todo))} worker process(es)" + (f" ({resumed} already converted)" if resumed else ""),
            flush=True)
    _run_shards(todo, state, out_dir, per_file, workers)
  elif todo:
    _run_source(src, todo[0], state, out_dir, per_file)
  entries = [state["done"][u.key] for u in units]
  totals = {"files": sum(len(e["files"]) for e in entries), "written": sum(e["written"] for e in entries),
            "skipped": sum(e["skipped"] for e in entries), "units": len(units), "resumed": resumed}
  if sharded and not totals["written"]:
    raise DataError(f"no readable sample in the {len(units)} tar shard(s) of {spec!r} "
                    f"(skipped {totals['skipped']})")
  return totals
