"""Seeds and per-epoch shuffling shared by the sources and the pipeline.

Every stage's seed is a hash of (seed, stage, ...) (`derive_seed`), so runs with nearby seeds
share no permutation; `EpochShuffle` repeats a random-access dataset forever in a fresh
permutation each epoch.
"""

from __future__ import annotations

import sys

import grain
import numpy as np

from vlmjax.errors import DataError


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
