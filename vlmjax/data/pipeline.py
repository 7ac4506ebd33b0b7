"""The grain input pipeline: sources -> this host's share, shuffled -> mix -> decode + batch -> device.

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
({"image": f32 [B, S, S, 3], "text": i32 [B, L]}). `get_state` / `set_state` go
into the checkpoint: a resumed run reads exactly the batches an uninterrupted one
would have read. `stats()` gives the cumulative skip counters for metrics.
"""

from __future__ import annotations

import ast
import functools
import sys
import weakref

import grain
import jax
import ml_collections
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.data import batcher, sources, tokenizers, transforms
from vlmjax.errors import DataError


def _close_iterators(box: list) -> None:
  while box:
    box.pop().close()


class Batches:
  """Host batches from a grain iterator, assembled into global sharded arrays.

  `close()` (or dropping the last reference, or the interpreter's exit) stops the prefetch and
  decode threads and closes the open shards; the iterator is released with it. `get_state` and
  `stats` still answer after `close()`.
  """

  def __init__(self, iterator, sharding: jax.sharding.Sharding):
    self._box, self._sharding = [iterator], sharding  # the finalizer holds the box, never `self`
    self._finalizer = weakref.finalize(self, _close_iterators, self._box)
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


def to_global(batch: dict[str, np.ndarray], *, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This host's rows -> global arrays sharded over the batch axis (on device, ahead of the train step)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


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


def derive_seed(seed: int, *stage: int) -> int:
  """A 32-bit seed hashed from (seed, *stage): unlike seed + i, nearby seeds give unrelated streams."""
  return int(np.random.SeedSequence([seed, *stage]).generate_state(1)[0])


class EpochShuffle(grain.MapDataset):
  """The parent repeated forever, in a fresh permutation each epoch, seeded by a hash of (seed, epoch).

  (grain's `shuffle` seeds epoch e with seed + e, so epoch e + 1 of seed s is epoch e of seed s + 1.)
  """

  def __init__(self, parent: grain.MapDataset, *, seed: int):
    super().__init__(parent)
    self._seed, self._n, self._seeds = seed, len(parent), {}
    if not self._n:
      raise DataError(f"data source {parent!r} is empty")

  def __len__(self) -> int:
    return sys.maxsize

  def _epoch_seed(self, epoch: int) -> int:
    if epoch not in self._seeds:
      self._seeds[epoch] = derive_seed(self._seed, epoch)
    return self._seeds[epoch]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(int(index), self._n)
    j = grain.experimental.index_shuffle(i, max_index=self._n - 1, seed=self._epoch_seed(epoch), rounds=4)
    return self._parent[int(j)]

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"


def host_stream(spec: str, data_cfg: ml_collections.ConfigDict, *, seed: int, image_size: int,
                index: int, count: int) -> grain.IterDataset:
  """Raw records of one source for host `index` of `count`, shuffled, repeating forever."""
  kind, _, rest = spec.partition(":")
  if kind == "tar":
    if not rest:
      raise DataError(f"data spec {spec!r} names no path; expected tar:PATTERN")
    from vlmjax.data import tar_stream
    ds = tar_stream.TarStream(sources.expand_pattern(rest), seed=seed, host_index=index, host_count=count)
    if data_cfg.shuffle_buffer > 1:
      ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=data_cfg.shuffle_buffer,
                                                       seed=derive_seed(seed, 1))
    return ds
  source = sources.open_source(spec, image_size=image_size, data_dir=data_cfg.data_dir or None)
  ds = EpochShuffle(grain.MapDataset.source(source), seed=seed)[index::count]  # this host's share of each batch
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.num_threads,
                                              prefetch_buffer_size=4 * max(1, data_cfg.num_threads)))


def host_batches(data_cfg: ml_collections.ConfigDict, *, batch_size: int, seed: int, image_size: int,
                 context_length: int, vocab_size: int, index: int, count: int) -> grain.IterDataset:
  """This host's batches as numpy arrays ({"image": f32 [b, S, S, 3], "text": i32 [b, L]})."""
  if data_cfg.image_mode not in transforms.MODES:
    raise ConfigError(f"data image_mode {data_cfg.image_mode!r} is unknown; valid: {', '.join(transforms.MODES)}")
  tokenizer = tokenizers.build(data_cfg.tokenizer)
  if tokenizer.vocab_size > vocab_size:
    raise ConfigError(f"tokenizer {data_cfg.tokenizer!r} has {tokenizer.vocab_size} ids but "
                      f"model.text.vocab_size is {vocab_size}")
  mixture = parse_mixture(data_cfg.source)
  streams = [host_stream(spec, data_cfg, seed=derive_seed(seed, i), image_size=image_size, index=index, count=count)
             for i, (spec, _) in enumerate(mixture)]
  if len(streams) == 1:
    raw = streams[0]
  else:
    raw = grain.IterDataset.mix({str(i): s for i, s in enumerate(streams)},
                                {str(i): w for i, (_, w) in enumerate(mixture)})
  return batcher.DecodeBatch(
      raw, batch_size=batch_size, context_length=context_length, tokenizer=tokenizer,
      decoder=transforms.ImageDecoder(image_size, data_cfg.image_mode, data_cfg.crop_min_scale),
      seed=seed, num_threads=data_cfg.num_threads, max_skip_fraction=data_cfg.max_skip_fraction,
      host_index=index)


def build(data_cfg: ml_collections.ConfigDict, *, global_batch: int, seed: int, image_size: int,
          context_length: int, vocab_size: int, sharding: jax.sharding.Sharding,
          process_index: int | None = None, process_count: int | None = None) -> Batches:
  """The training iterator; process_index/count default to jax's (tests simulate hosts with them)."""
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  if global_batch % count:
    raise ConfigError(f"batch_size {global_batch} is not divisible by {count} processes")
  ds = host_batches(data_cfg, batch_size=global_batch // count, seed=seed, image_size=image_size,
                    context_length=context_length, vocab_size=vocab_size, index=index, count=count)
  ds = ds.map(functools.partial(to_global, sharding=sharding))
  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data_cfg.prefetch)
  return Batches(iter(ds), sharding)
