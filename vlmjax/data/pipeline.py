"""The grain input pipeline: source -> per-epoch shuffle -> per-host split -> decode -> batch.

`build` returns a `Batches` iterator whose items are global, sharded `jax.Array`
dicts ({"image": [B, S, S, 3], "text": [B, L]}); its `get_state` / `set_state`
go into the checkpoint, so a resumed run reads exactly the batches an
uninterrupted one would have read.
"""

from __future__ import annotations

import grain
import jax
import ml_collections
import numpy as np

from vlmjax.config import ConfigError
from vlmjax.data import sources, tokenizers, transforms


class Batches:
  """Host batches from a grain iterator, assembled into global sharded arrays."""

  def __init__(self, iterator, sharding: jax.sharding.Sharding):
    self._it, self._sharding = iterator, sharding

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self._it)
    return {k: jax.make_array_from_process_local_data(self._sharding, np.asarray(v))
            for k, v in local.items()}

  def get_state(self) -> dict:
    return self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._it.set_state(state)


def build(data_cfg: ml_collections.ConfigDict, *, global_batch: int, seed: int, image_size: int,
          context_length: int, vocab_size: int, sharding: jax.sharding.Sharding) -> Batches:
  count, index = jax.process_count(), jax.process_index()
  if global_batch % count:
    raise ConfigError(f"batch_size {global_batch} is not divisible by {count} processes")
  source = sources.open_source(data_cfg.source, image_size=image_size)
  if data_cfg.tokenizer not in tokenizers.TOKENIZERS:
    raise ConfigError(f"data tokenizer {data_cfg.tokenizer!r} is unknown; valid: {', '.join(tokenizers.TOKENIZERS)}")
  tokenizer = tokenizers.build(data_cfg.tokenizer)
  if tokenizer.vocab_size > vocab_size:
    raise ConfigError(f"tokenizer {data_cfg.tokenizer!r} has {tokenizer.vocab_size} ids but "
                      f"model.text.vocab_size is {vocab_size}")
  ds = (grain.MapDataset.source(source)
        .shuffle(seed=seed)           # a fresh permutation of the whole source every epoch
        .repeat(None)
        [index::count]                # this host's share of every global batch
        .map(transforms.ImageText(image_size, context_length, tokenizer))
        .batch(global_batch // count, drop_remainder=True))
  options = grain.ReadOptions(num_threads=data_cfg.num_threads, prefetch_buffer_size=data_cfg.prefetch)
  return Batches(iter(ds.to_iter_dataset(options)), sharding)
