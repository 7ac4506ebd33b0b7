"""The grain input pipeline: sources -> this host's share, shuffled -> mix -> decode + batch -> device.

Each source of the mixture is opened with `sources.open_source(spec, mode="stream")`:

  tar shards       per epoch a fresh shard order, every `process_count`-th shard
                   for this host, read as a stream, then a window shuffle buffer
  random access    (ArrayRecord, TFDS, synthetic) a global permutation per epoch,
                   every `process_count`-th index for this host
  seeds            every stage's seed is a hash of (seed, stage, epoch) (`derive_seed`), so
                   runs with nearby seeds share no permutation
  mixture          `source` as {spec: weight} (or that dict written as a string,
                   since config keys cannot hold dots): grain's weighted mix
  decode + batch   `batcher.DecodeBatch` on `num_threads` threads, then global
                   sharded arrays, `prefetch` batches ahead in a background thread

`build` returns `Batches`, whose items are global sharded `jax.Array` dicts
({"image": f32 [B, S, S, 3], "text": i32 [B, L]}; with `max_patches` > 0 "image" is NaFlex's dict
{"patches" f32 [B, N, P], "shapes" i32 [B, 2], "mask" bool [B, N]}: `vlmjax.data.naflex`). `get_state` / `set_state` go
into the checkpoint: a resumed run reads exactly the batches an uninterrupted one
would have read. `stats()` gives the cumulative skip counters for metrics.
"""

from __future__ import annotations

import ast
import functools
import threading
import weakref

import grain
import jax
import ml_collections
import numpy as np

from vlmjax.data import batcher, locca, naflex, sources, tokenizers, transforms
from vlmjax.data.shuffle import derive_seed
from vlmjax.errors import ConfigError, DataError


def _close_iterators(box: list, stop: threading.Event | None) -> None:
  if stop is not None:
    stop.set()  # first: a batch being filled is abandoned, so the prefetch thread's join is short
  while box:
    box.pop().close()


class Batches:
  """Host batches from a grain iterator, assembled into global sharded arrays.

  `close()` (or dropping the last reference, or the interpreter's exit) stops the prefetch and
  decode threads (a batch being filled is abandoned: closing never waits on bad data) and closes
  the open shards; the iterator is released with it. `get_state` and
  `stats` still answer after `close()`.
  """

  def __init__(self, iterator, sharding: jax.sharding.Sharding, stop: threading.Event | None = None):
    self._box, self._sharding = [iterator], sharding  # the finalizer holds the box, never `self`
    self._finalizer = weakref.finalize(self, _close_iterators, self._box, stop)
    self._final_state: dict | None = None

  @property
  def _it(self):
    if not self._box:
      raise ValueError("the data iterator is closed")
    return self._box[0]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    return next(self._it)  # already global arrays: assembled in the prefetch thread

  def get_state(self) -> dict:
    if not self._box and self._final_state is not None:
      return self._final_state
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)

  def stats(self) -> dict[str, float]:
    """Cumulative counters up to the last batch returned: data/samples, data/skipped[/<reason>]."""
    return batcher.stats_of(self.get_state())

  def close(self) -> None:
    if self._box:
      try:
        self._final_state = self._box[0].get_state()
      except Exception:  # noqa: BLE001 -- closing after a failed step: the failure is the one to show
        pass
    self._finalizer()


def to_global(batch: dict, *, sharding: jax.sharding.Sharding) -> dict:
  """This host's rows -> global arrays sharded over the batch axis (on device, ahead of the train step);
  a value may be a dict of arrays (NaFlex's image), each put the same way."""
  put = lambda v: jax.make_array_from_process_local_data(sharding, v)
  return {k: jax.tree.map(put, v) for k, v in batch.items()}


def parse_mixture(source) -> list[tuple[str, float]]:
  """A spec, a {spec: weight} mapping, or that mapping as a string -> [(spec, weight)]."""
  if isinstance(source, str) and source.strip().startswith("{"):
    try:
      source = ast.literal_eval(source.strip())
    except (ValueError, SyntaxError):
      raise DataError(f"data source {source!r} is not a {{spec: weight}} dict literal") from None
  if isinstance(source, str):
    return [(source, 1.0)]
  if not hasattr(source, "items") or not source:
    raise DataError(f"data source {source!r} must be a spec string or a non-empty {{spec: weight}} dict")
  out = []
  for spec, weight in source.items():
    if not isinstance(weight, (int, float)) or weight <= 0:
      raise DataError(f"mixture weight of {spec!r} must be a positive number, got {weight!r}")
    out.append((str(spec), float(weight)))
  return out


def host_batches(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int, image_size: int,
                 context_length: int, vocab_size: int, index: int, count: int,
                 patch_size: int | None = None) -> grain.IterDataset:
  """This host's batches as numpy arrays ({"image": f32 [b, S, S, 3], "text": i32 [b, L]}; NaFlex's image
  dict at `data_cfg.max_patches` > 0, which needs the model's `patch_size`)."""
  transforms.check_normalize(data_cfg.normalize)
  if data_cfg.image_mode not in transforms.MODES:
    raise ConfigError(f"data image_mode {data_cfg.image_mode!r} is unknown; valid: {', '.join(transforms.MODES)}")
  tokenizer = tokenizers.build(data_cfg.tokenizer)
  if tokenizer.vocab_size > vocab_size:
    raise ConfigError(f"tokenizer {data_cfg.tokenizer!r} has {tokenizer.vocab_size} ids but "
                      f"model.text.vocab_size is {vocab_size}")
  mixture = parse_mixture(data_cfg.source)
  locca.check(data_cfg.locca)
  if locca.needs_regions(data_cfg.locca):
    check_regions([spec for spec, _ in mixture], image_size, data_cfg.data_dir or None)
  streams = [sources.open_source(spec, mode="stream", image_size=image_size, data_dir=data_cfg.data_dir or None,
                                 seed=derive_seed(seed, i), host_index=index, host_count=count,
                                 shuffle_buffer=data_cfg.shuffle_buffer, num_threads=data_cfg.num_threads)
             for i, (spec, _) in enumerate(mixture)]
  if len(streams) == 1:
    raw = streams[0]
  else:
    raw = grain.IterDataset.mix({str(i): s for i, s in enumerate(streams)},
                                {str(i): w for i, (_, w) in enumerate(mixture)})
  if data_cfg.max_patches:
    if patch_size is None:
      raise ValueError("host_batches needs patch_size for NaFlex batches (data.train.max_patches > 0)")
    decoder = naflex.Decoder(patch_size, data_cfg.max_patches, data_cfg.normalize)
    pack = naflex.host_pack(data_cfg, batch_size, count)
  else:
    pack = None
    decoder = transforms.ImageDecoder(image_size, data_cfg.image_mode, data_cfg.crop_min_scale)
  return batcher.DecodeBatch(
      raw, batch_size=batch_size, context_length=context_length, tokenizer=tokenizer, decoder=decoder,
      seed=seed, num_threads=data_cfg.num_threads, max_skip_fraction=data_cfg.max_skip_fraction,
      host_index=index, locca_cfg=data_cfg.locca, pack=pack, budgets=naflex.budgets(data_cfg),
      normalize=data_cfg.normalize)


def check_regions(specs: list[str], image_size: int, data_dir: str | None) -> None:
  """A one-line ConfigError when LocCa's region tasks are on and no source of the mixture has regions
  (judged by each source's first record; sources without them serve the captioning task only)."""
  for spec in specs:
    first = next(iter(sources.open_source(spec, mode="scan", image_size=image_size, data_dir=data_dir)), None)
    if first is not None and (first.get("regions") is not None or first.get("_bad_regions")):
      return
  raise ConfigError(f"data.train.locca asks for region tasks (ref, gcap) but no record of {', '.join(specs)} has "
                    "regions (a \"regions\" list in its .json / record; synthetic:shapes_multi has them); set "
                    "data.train.locca.ref=0 and data.train.locca.gcap=0, or train on data with regions")


def build(data_cfg: ml_collections.ConfigDict, *, global_batch: int, seed: int, image_size: int,
          context_length: int, vocab_size: int, sharding: jax.sharding.Sharding,
          process_index: int | None = None, process_count: int | None = None,
          patch_size: int | None = None) -> Batches:
  """The training iterator; process_index/count default to jax's (tests simulate hosts with them);
  `patch_size` (the model's) is read by NaFlex batches only (`data_cfg.max_patches` > 0)."""
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  if global_batch % count:
    raise ConfigError(f"batch_size {global_batch} is not divisible by {count} processes")
  ds = host_batches(data_cfg, batch_size=global_batch // count, seed=seed, image_size=image_size,
                    context_length=context_length, vocab_size=vocab_size, index=index, count=count,
                    patch_size=patch_size)
  stop = ds.stop
  ds = ds.map(functools.partial(to_global, sharding=sharding))
  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_cfg.prefetch)
  return Batches(iter(ds), sharding, stop)
