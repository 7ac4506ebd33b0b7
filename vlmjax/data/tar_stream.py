"""Tar shards (img2dataset layout) read front to back as a checkpointable grain stream.

Local files and URLs (http(s)://, gs://, s3://, anything fsspec opens) are read
sequentially, never downloaded whole. Each epoch visits the shards in a fresh
order (seeded by epoch); a host reads every `host_count`-th shard of that order.
The iterator state is (epoch, position in the order, byte offset of the next
sample's first tar header), so resuming reopens one shard and seeks there (or
reads up to there on a stream that cannot seek).

Bad input never raises: a missing shard, an unreachable URL, an empty, corrupt
or truncated tar, a sample without image or caption, or a caption that is not
UTF-8 is skipped and reported as `("reason", shard)` in the `_skips` list of the
next record yielded.
"""

from __future__ import annotations

import io
import os
import tarfile

import grain
import numpy as np

from vlmjax.data.sources import IMAGE_EXTS, TEXT_EXTS, DataError, is_url

_CHUNK = 1 << 20


def _open(path: str):
  """A sequential binary file object for a local path or an fsspec URL."""
  if not is_url(path):
    return open(path, "rb", buffering=_CHUNK)
  import fsspec
  kwargs = {"block_size": 0} if path.startswith(("http://", "https://")) else {}  # 0: a plain stream
  return fsspec.open(path, "rb", **kwargs).open()


def _skip_to(f, offset: int) -> None:
  try:
    f.seek(offset)
    return
  except (OSError, ValueError):  # a stream that cannot seek: read up to the offset
    pass
  while offset > 0:
    got = len(f.read(min(offset, _CHUNK)))
    if not got:
      raise EOFError("shard ended before the resume offset")
    offset -= got


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)


class TarStream(grain.IterDataset):
  """Raw records {"key", "image" (bytes), "caption", "_shard", "_skips"} from tar shards."""

  def __init__(self, paths: list[str], *, seed: int, host_index: int = 0, host_count: int = 1,
               shuffle_shards: bool = True, repeat: bool = True):
    super().__init__()
    if len(paths) < host_count:
      raise DataError(f"{len(paths)} tar shard(s) cannot be split over {host_count} hosts; "
                      f"write at least {host_count} shards")
    self.paths, self.seed, self.repeat = list(paths), seed, repeat
    self.host_index, self.host_count, self.shuffle_shards = host_index, host_count, shuffle_shards

  def host_shards(self, epoch: int) -> list[str]:
    order = shard_order(len(self.paths), seed=self.seed, epoch=epoch, shuffle=self.shuffle_shards)
    return [self.paths[i] for i in order[self.host_index::self.host_count]]

  def __iter__(self) -> "TarStreamIterator":
    return TarStreamIterator(self)

  def __repr__(self) -> str:
    return f"TarStream({len(self.paths)} shards, host {self.host_index}/{self.host_count})"


class TarStreamIterator(grain.DatasetIterator):
  """Reads one shard at a time; see the module docstring for the state and the skip reasons."""

  def __init__(self, ds: TarStream):
    super().__init__()
    self._ds = ds
    self._epoch = self._pos = self._offset = self._epoch_records = 0
    self._shards = ds.host_shards(0)
    self._file = self._tar = self._pending = None
    self._base = 0  # byte offset in the shard where the open tar stream starts
    self._skips: list[tuple[str, str]] = []

  # -- state ----------------------------------------------------------------
  def get_state(self) -> dict:
    return {"epoch": self._epoch, "pos": self._pos, "offset": self._offset,
            "epoch_records": self._epoch_records}

  def set_state(self, state: dict) -> None:
    self._close()
    self._epoch, self._pos = int(state["epoch"]), int(state["pos"])
    self._offset, self._epoch_records = int(state["offset"]), int(state["epoch_records"])
    self._shards = self._ds.host_shards(self._epoch)
    self._skips = []

  # -- reading --------------------------------------------------------------
  def _close(self) -> None:
    if self._file is not None:
      try:
        self._file.close()
      except Exception:  # noqa: BLE001 -- closing a broken remote stream may raise anything
        pass
    self._file = self._tar = self._pending = None

  def _skip(self, reason: str) -> None:
    self._skips.append((reason, self._shards[self._pos]))

  def _next_shard(self) -> None:
    self._close()
    self._pos, self._offset = self._pos + 1, 0
    if self._pos < len(self._shards):
      return
    if not self._epoch_records:
      raise DataError(f"no readable sample in the {len(self._shards)} tar shard(s) of this host "
                      f"(e.g. {self._shards[0]}): {_summary(self._skips)}")
    if not self._ds.repeat:
      raise StopIteration
    self._epoch, self._pos, self._epoch_records = self._epoch + 1, 0, 0
    self._shards = self._ds.host_shards(self._epoch)

  def _open_shard(self) -> bool:
    path = self._shards[self._pos]
    try:
      self._file = _open(path)
      _skip_to(self._file, self._offset)
      self._base = self._offset
      self._tar = tarfile.open(fileobj=self._file, mode="r|")
      return True
    except FileNotFoundError:
      self._skip("unreachable" if is_url(path) else "missing_shard")
    except tarfile.ReadError as e:
      self._skip("empty_shard" if "empty" in str(e) and not self._offset else "bad_shard")
    except (tarfile.TarError, EOFError):
      self._skip("truncated_shard")
    except Exception:  # noqa: BLE001 -- remote filesystems raise their own exception types
      self._skip("unreachable" if is_url(path) else "bad_shard")
    return False

  def _next_member(self):
    if self._pending is not None:
      member, self._pending = self._pending, None
      return member
    return self._tar.next()

  def __next__(self) -> dict:
    if self._pos >= len(self._shards):  # a finite stream that has ended
      raise StopIteration
    while True:
      if self._offset < 0:  # the shard was read to its end
        self._next_shard()
        continue
      if self._tar is None and not self._open_shard():
        self._next_shard()
        continue
      record = self._read_sample()
      if record is not None:
        self._epoch_records += 1
        record["_skips"], self._skips = self._skips, []
        return record
      self._next_shard()

  def _read_sample(self) -> dict | None:
    """The next complete sample of the open shard, or None at its end (or on a broken tar)."""
    group, key = {}, None
    try:
      while True:
        member = self._next_member()
        if member is None:
          self._offset = -1
          return self._finish(key, group) if key is not None else None
        name = os.path.basename(member.name)
        member_key, _, ext = name.partition(".")
        if key is not None and member_key != key:
          self._pending, self._offset = member, self._base + member.offset  # next sample starts here
          record = self._finish(key, group)
          if record is not None:
            return record
          group, key, self._pending = {}, None, None  # a skipped sample: go on with this member
        if not member.isfile():
          continue
        key = member_key
        ext = ext.lower()
        if ext in IMAGE_EXTS or ext in TEXT_EXTS:
          group[ext] = self._tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, ValueError):
      self._skip("truncated_shard")
    except Exception:  # noqa: BLE001 -- a remote stream that breaks mid-shard
      self._skip("unreachable" if is_url(self._shards[self._pos]) else "truncated_shard")
    return None

  def _finish(self, key: str, group: dict) -> dict | None:
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    text = next((group[e] for e in TEXT_EXTS if e in group), None)
    if image is None:
      self._skip("no_image")
      return None
    if text is None:
      self._skip("no_caption")
      return None
    try:
      caption = text.decode("utf-8").strip()
    except UnicodeDecodeError:
      self._skip("bad_text")
      return None
    if not caption:
      self._skip("no_caption")
      return None
    return {"key": key, "image": image, "caption": caption, "_shard": self._shards[self._pos]}

  def close(self) -> None:
    self._close()


def _summary(skips: list[tuple[str, str]]) -> str:
  counts: dict[str, int] = {}
  for reason, _ in skips:
    counts[reason] = counts.get(reason, 0) + 1
  return ", ".join(f"{r}: {n}" for r, n in sorted(counts.items())) or "no samples"
