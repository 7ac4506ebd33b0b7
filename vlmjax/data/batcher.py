"""Raw records -> host batches: parallel decode, tokenise, skip-and-count bad samples.

`DecodeBatch` pulls raw records ({"key", "image", "caption", "_shard", "_skips"}, and
"captions" where an image has several: each visit trains on one of them, drawn from
the record's seed) from a grain iterator, decodes and tokenises them on a thread pool (OpenCV and
PIL release the GIL), drops the ones that fail and pulls more until the batch is
full. Its state is the parent's state plus the number of records consumed (which,
with the host index, seeds each record's random crop: hosts draw different crops)
and the skip counters, so a restored iterator continues with exactly the next batch
and the same statistics.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grain
import numpy as np

from vlmjax.data import transforms
from vlmjax.errors import DataError

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0        # at most one skip warning a minute
MIN_SEEN_FOR_CHECK = 200   # the skip fraction is judged only after this many samples
MAX_SHARDS_KEPT = 64       # per-shard skip counts kept in the state (the worst ones)


class DecodeBatch(grain.IterDataset):
  """Batches of {"image": float32 [B, S, S, 3] (normalised), "text": int32 [B, L]}."""

  def __init__(self, parent: grain.IterDataset, *, batch_size: int, decoder: transforms.ImageDecoder,
               tokenizer, context_length: int, seed: int, num_threads: int, max_skip_fraction: float,
               host_index: int):
    super().__init__(parent)
    self.batch_size, self.decoder, self.tokenizer = batch_size, decoder, tokenizer
    self.context_length, self.seed, self.num_threads = context_length, seed, max(1, num_threads)
    self.max_skip_fraction, self.host_index = max_skip_fraction, host_index

  def __iter__(self) -> "DecodeBatchIterator":
    return DecodeBatchIterator(self._parent.__iter__(), self)


class DecodeBatchIterator(grain.DatasetIterator):

  def __init__(self, parent, ds: DecodeBatch):
    super().__init__(parent)
    self._ds = ds
    self._pool = futures.ThreadPoolExecutor(ds.num_threads, thread_name_prefix="vlmjax-decode")
    self._consumed, self._good = 0, 0
    self._skipped: dict[str, int] = {}
    self._shards: dict[str, int] = {}
    self._last_warning = -float("inf")

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "consumed": self._consumed, "good": self._good,
            "skipped": dict(self._skipped), "shards": dict(self._shards)}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._consumed, self._good = int(state["consumed"]), int(state["good"])
    self._skipped = {k: int(v) for k, v in state["skipped"].items()}
    self._shards = {k: int(v) for k, v in state["shards"].items()}

  def _process(self, raw: dict, index: int, slot: int, images: np.ndarray, texts: np.ndarray):
    """Decodes one raw record into row `slot` of the batch; returns None or the reason it is skipped."""
    if raw.get("image") is None:
      return "no_image" if "_shard" in raw else ""  # "": a marker record that only carries _skips
    caption = raw.get("caption")
    several = [c for c in raw.get("captions") or () if c and c.strip()]
    if len(several) > 1:  # an image with several captions (COCO-style): one of them, drawn per visit
      caption = several[np.random.default_rng([self._ds.seed, self._ds.host_index, index, 1]).integers(len(several))]
    if not caption or not caption.strip():
      return "no_caption"
    try:
      image = self._ds.decoder(raw["image"], np.random.default_rng([self._ds.seed, self._ds.host_index, index]))
    except transforms.BadImage:
      return "bad_image"
    transforms.normalize_into(image, images[slot])
    texts[slot] = self._ds.tokenizer.encode(caption.strip(), self._ds.context_length)
    return None

  def _count(self, reason: str, shard: str) -> None:
    self._skipped[reason] = self._skipped.get(reason, 0) + 1
    self._shards[shard] = self._shards.get(shard, 0) + 1
    if len(self._shards) > MAX_SHARDS_KEPT:
      del self._shards[min(self._shards, key=self._shards.get)]

  def __next__(self) -> dict:
    ds = self._ds
    images = np.empty((ds.batch_size, ds.decoder.size, ds.decoder.size, 3), np.float32)
    texts = np.empty((ds.batch_size, ds.context_length), np.int32)
    free = list(range(ds.batch_size))  # rows still to fill; a failed record leaves its row to the next one
    while free:
      raws = [next(self._parent) for _ in free]
      first = self._consumed
      self._consumed += len(raws)
      results = list(self._pool.map(self._process, raws, range(first, first + len(raws)), free,
                                    [images] * len(raws), [texts] * len(raws)))
      for raw, reason in zip(raws, results):
        for skip_reason, shard in raw.get("_skips", ()):
          self._count(skip_reason, shard)
        if reason:
          self._count(reason, raw.get("_shard", "?"))
      free = [row for row, reason in zip(free, results) if reason is not None]
    self._good += ds.batch_size
    self._check()
    return {"image": images, "text": texts}

  def _check(self) -> None:
    skipped = sum(self._skipped.values())
    if not skipped:
      return
    seen = skipped + self._good
    worst = ", ".join(f"{s} ({n})" for s, n in sorted(self._shards.items(), key=lambda kv: -kv[1])[:3])
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(self._skipped.items()))
    if seen >= MIN_SEEN_FOR_CHECK and skipped > self._ds.max_skip_fraction * seen:
      raise DataError(f"skipped {skipped} of {seen} samples ({reasons}), more than max_skip_fraction="
                      f"{self._ds.max_skip_fraction}; worst shards: {worst}")
    now = time.monotonic()
    if now - self._last_warning >= WARN_EVERY_S:
      self._last_warning = now
      log.warning("data: skipped %d of %d samples so far (%s); worst shards: %s", skipped, seen, reasons, worst)

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    super().close()  # the upstream iterators: prefetch threads, the open shard


def stats_of(state: dict) -> dict[str, float]:
  """Cumulative counters from a DecodeBatch state: data/samples, data/skipped, data/skipped/<reason>."""
  skipped = sum(state["skipped"].values())
  out = {"data/samples": float(state["good"]), "data/skipped": float(skipped),
         "data/skipped_fraction": skipped / max(1, skipped + state["good"])}
  out.update({f"data/skipped/{r}": float(n) for r, n in sorted(state["skipped"].items())})
  return out
