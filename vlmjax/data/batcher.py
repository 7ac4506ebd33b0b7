"""Raw records -> host batches: parallel decode, tokenise, skip-and-count bad samples.

`DecodeBatch` pulls raw records ({"key", "image", "caption", "_shard", "_skips"}, and
"captions" where an image has several: each visit trains on one of them, drawn from
the record's seed) from a grain iterator, decodes and tokenises them on a thread pool (OpenCV and
PIL release the GIL), drops the ones that fail and pulls more until the batch is
full. Its state is the parent's state plus the number of records consumed (which,
with the host index, seeds each record's random crop: hosts draw different crops)
and the skip counters, so a restored iterator continues with exactly the next batch
and the same statistics.

Bad data stops the run with a one-line `DataError` naming the worst shards, judged as the
records arrive (not only when a batch is complete, which may be never: a stream whose every
image is undecodable): when more than `max_skip_fraction` of the samples seen so far were
skipped (after `MIN_SEEN_FOR_CHECK` samples), or when `MAX_SKIPS_IN_A_ROW` samples in a row
were skipped (`max_skip_fraction=1` included: no batch can be filled). `DecodeBatch.stop` (set
by `pipeline.Batches.close`) ends a batch being filled, so closing never waits on a stream.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grain
import numpy as np

from vlmjax.data import locca, naflex, regions, transforms
from vlmjax.errors import DataError

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0        # at most one skip warning a minute
MIN_SEEN_FOR_CHECK = 200   # the skip fraction is judged only after this many samples
MAX_SHARDS_KEPT = 64       # per-shard skip counts kept in the state (the worst ones)
MAX_SKIPS_IN_A_ROW = 100_000  # skipped samples without a good one between them: the data cannot fill a batch


class Stopped(Exception):
  """The iterator was closed while it was filling a batch (`DecodeBatch.stop`)."""


class DecodeBatch(grain.IterDataset):
  """Batches of {"image": float32 [B, S, S, 3] (normalised), "text": int32 [B, L]}; with LocCa tasks
  (`locca`: `data.train.locca` with a weight > 0) also "decoder_text" (int32 [B, L]) and
  "decoder_loss" (bool [B, L]): each example's decoder task drawn from the record's seed, its
  regions mapped through the image's crop (`vlmjax.data.locca`). With a `naflex.Decoder`
  (`data.train.max_patches` > 0) "image" is NaFlex's dict {"patches", "shapes", "mask", "positions"}
  (`vlmjax.data.naflex`), and the state counts the batches' tokens and padding tokens; `pack`
  {budget: (rows, tokens per row)} packs the images into shared rows (`naflex.Packed`: the dict gains
  "segments", the other arrays follow the images' packed order) and counts the images
  resized to fit. `budgets` (`data.train.budgets`): each batch's patch budget drawn from these, the same
  on every host (from the run's seed and the batch's number), so a run sees one batch shape per budget."""

  def __init__(self, parent: grain.IterDataset, *, batch_size: int,
               decoder: transforms.ImageDecoder | naflex.Decoder,
               tokenizer, context_length: int, seed: int, num_threads: int, max_skip_fraction: float,
               host_index: int, locca_cfg=None, pack: dict[int, tuple[int, int]] | None = None,
               budgets: tuple[int, ...] = (), normalize: str = "clip"):
    super().__init__(parent)
    self.normalize = normalize  # the mean and std of the square path (`transforms.NORMALIZE`); NaFlex: its decoder's
    self.pack = pack
    naflex_decoder = isinstance(decoder, naflex.Decoder)
    self.budgets = tuple(budgets) or ((decoder.max_patches,) if naflex_decoder else ())
    self.decoders = ({n: naflex.Decoder(decoder.patch, n, decoder.normalize) for n in self.budgets}
                     if naflex_decoder else {})
    self.locca = locca_cfg if locca_cfg is not None and locca.active(locca_cfg) else None
    self.batch_size, self.decoder, self.tokenizer = batch_size, decoder, tokenizer
    self.context_length, self.seed, self.num_threads = context_length, seed, max(1, num_threads)
    self.max_skip_fraction, self.host_index = max_skip_fraction, host_index
    self.stop = threading.Event()  # set when the pipeline closes: a batch being filled is abandoned

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
    self._in_a_row = 0  # samples skipped since the last good one (not in the state: a guard against stalls)
    self._naflex = isinstance(ds.decoder, naflex.Decoder)
    self._tokens, self._padding = 0, 0  # NaFlex: all patch tokens of the batches returned, and the padding
    self._resized = 0  # packed NaFlex: images resized to the room left in their batch's rows
    self._decoder = ds.decoder  # NaFlex: the decoder of the budget of the batch being filled

  def get_state(self) -> dict:
    state = {"parent": self._parent.get_state(), "consumed": self._consumed, "good": self._good,
             "skipped": dict(self._skipped), "shards": dict(self._shards)}
    if self._naflex:  # only then: square runs keep the state (and checkpoints) they always had
      state.update(tokens=self._tokens, padding=self._padding)
    if self._ds.pack is not None:
      state["pack_resized"] = self._resized
    return state

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._consumed, self._good = int(state["consumed"]), int(state["good"])
    self._skipped = {k: int(v) for k, v in state["skipped"].items()}
    self._shards = {k: int(v) for k, v in state["shards"].items()}
    self._tokens, self._padding = int(state.get("tokens", 0)), int(state.get("padding", 0))
    self._resized = int(state.get("pack_resized", 0))

  def _process(self, raw: dict, index: int, slot: int, out: dict[str, np.ndarray]):
    """Decodes one raw record into row `slot` of the batch; returns None or the reason it is skipped."""
    if raw.get("image") is None:
      return "no_image" if "_shard" in raw else ""  # "": a marker record that only carries _skips
    caption = raw.get("caption")
    several = [c for c in raw.get("captions") or () if c and c.strip()]
    if len(several) > 1:  # an image with several captions (COCO-style): one of them, drawn per visit
      caption = several[np.random.default_rng([self._ds.seed, self._ds.host_index, index, 1]).integers(len(several))]
    if not caption or not caption.strip():
      return "no_caption"
    if self._ds.locca is not None and raw.get("_bad_regions"):
      return "bad_region"
    rng = np.random.default_rng([self._ds.seed, self._ds.host_index, index])
    try:  # with LocCa, regions follow the crop: the decoder says which part of the original it kept
      if self._naflex:
        image, grid = self._decoder(raw["image"])
      else:
        image, crop, size = (self._ds.decoder.decode(raw["image"], rng) if self._ds.locca is not None
                             else (self._ds.decoder(raw["image"], rng), None, None))
    except naflex.TooSmall:
      return "too_small"
    except transforms.BadImage:
      return "bad_image"
    if isinstance(out["image"], naflex.Packed):
      out["image"].write(image, grid, slot)
    elif self._naflex:
      self._decoder.write(image, grid, out["image"], slot)
    else:
      transforms.normalize_into(image, out["image"][slot], self._ds.normalize)
    out["text"][slot] = self._ds.tokenizer.encode(caption.strip(), self._ds.context_length)
    if self._ds.locca is not None:
      # NaFlex keeps the whole image (its aspect ratio too): normalised boxes stay as they are
      kept = (raw["regions"] if self._naflex else regions.crop(raw["regions"], crop, *size)) if raw.get("regions") \
          else None
      out["decoder_text"][slot], out["decoder_loss"][slot] = locca.example(
          self._ds.locca, self._ds.tokenizer, caption.strip(), kept, self._ds.context_length,
          np.random.default_rng([self._ds.seed, self._ds.host_index, index, 2]))
    return None

  def _count(self, reason: str, shard: str) -> None:
    self._in_a_row += 1
    self._skipped[reason] = self._skipped.get(reason, 0) + 1
    self._shards[shard] = self._shards.get(shard, 0) + 1
    if len(self._shards) > MAX_SHARDS_KEPT:
      del self._shards[min(self._shards, key=self._shards.get)]

  def __next__(self) -> dict:
    ds = self._ds
    if self._naflex:  # this batch's budget: the same draw on every host
      budget = ds.budgets[np.random.default_rng([ds.seed, 7, self._good // ds.batch_size]).integers(len(ds.budgets))]
      self._decoder = ds.decoders[budget]
    out = {"image": (naflex.Packed(self._decoder, *ds.pack[budget], ds.batch_size) if ds.pack is not None
                     else self._decoder.empty_images(ds.batch_size) if self._naflex
                     else np.empty((ds.batch_size, ds.decoder.size, ds.decoder.size, 3), np.float32)),
           "text": np.empty((ds.batch_size, ds.context_length), np.int32)}
    if ds.locca is not None:
      out["decoder_text"] = np.empty((ds.batch_size, ds.context_length), np.int32)
      out["decoder_loss"] = np.empty((ds.batch_size, ds.context_length), bool)
    free = list(range(ds.batch_size))  # rows still to fill; a failed record leaves its row to the next one
    while free:
      if ds.stop.is_set():
        raise Stopped("the data pipeline was closed")
      raws = [next(self._parent) for _ in free]
      first = self._consumed
      self._consumed += len(raws)
      results = list(self._pool.map(self._process, raws, range(first, first + len(raws)), free,
                                    [out] * len(raws)))
      for raw, reason in zip(raws, results):
        for skip_reason, shard in raw.get("_skips", ()):
          self._count(skip_reason, shard)
        if reason:
          self._count(reason, raw.get("_shard", "?"))
        elif reason is None:
          self._in_a_row = 0
      free = [row for row, reason in zip(free, results) if reason is not None]
      if free:  # judged as the records come: a stream of bad samples may never complete a batch
        self._check(filled=ds.batch_size - len(free), warn=False)
    if ds.pack is not None:  # the images into shared rows; every other array follows their order
      out["image"], order_B, resized = out["image"].pack(self._pool)
      out.update({k: v[order_B] for k, v in out.items() if k != "image"})
      self._resized += resized
    self._good += ds.batch_size
    if self._naflex:
      mask = out["image"]["mask"]
      self._tokens, self._padding = self._tokens + mask.size, self._padding + int(mask.size - mask.sum())
    self._check()
    return out

  def _check(self, filled: int = 0, warn: bool = True) -> None:
    """A DataError when too many samples were skipped (`filled`: good rows of the batch being filled);
    with `warn`, a warning at most every WARN_EVERY_S while some are."""
    skipped = sum(self._skipped.values())
    if not skipped:
      return
    seen = skipped + self._good + filled
    too_many = seen >= MIN_SEEN_FOR_CHECK and skipped > self._ds.max_skip_fraction * seen
    stalled = self._in_a_row >= MAX_SKIPS_IN_A_ROW
    now = time.monotonic()
    if not (too_many or stalled or (warn and now - self._last_warning >= WARN_EVERY_S)):
      return
    worst = ", ".join(f"{s} ({n})" for s, n in sorted(self._shards.items(), key=lambda kv: -kv[1])[:3])
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(self._skipped.items()))
    if too_many:
      raise DataError(f"skipped {skipped} of {seen} samples ({reasons}), more than max_skip_fraction="
                      f"{self._ds.max_skip_fraction}; worst shards: {worst}")
    if stalled:
      raise DataError(f"skipped {self._in_a_row} samples in a row: no batch can be filled (in all, skipped "
                      f"{skipped} of {seen} samples: {reasons}); worst shards: {worst}")
    self._last_warning = now
    log.warning("data: skipped %d of %d samples so far (%s); worst shards: %s", skipped, seen, reasons, worst)

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    super().close()  # the upstream iterators: prefetch threads, the open shard


def stats_of(state: dict) -> dict[str, float]:
  """Cumulative counters from a DecodeBatch state: data/samples, data/skipped, data/skipped/<reason>;
  with NaFlex batches also data/padding_fraction: the padding tokens of all batches so far over all their
  tokens (cumulative, as the others, so it survives a resume; 0 before the first batch)."""
  skipped = sum(state["skipped"].values())
  out = {"data/samples": float(state["good"]), "data/skipped": float(skipped),
         "data/skipped_fraction": skipped / max(1, skipped + state["good"])}
  if "tokens" in state:
    out["data/padding_fraction"] = state["padding"] / max(1, state["tokens"])
  if "pack_resized" in state:
    out["data/pack_resized"] = float(state["pack_resized"])
  out.update({f"data/skipped/{r}": float(n) for r, n in sorted(state["skipped"].items())})
  return out
