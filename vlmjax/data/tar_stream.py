"""Tar shards (img2dataset layout) read front to back as a checkpointable grain stream.

Local files and URLs (http(s)://, gs://, s3://, anything fsspec opens) are read
sequentially, never downloaded whole. http(s) shards are read with the standard
library: connect and read timeouts (`HTTP_TIMEOUT_S`) but no total one, since a
shard is consumed at training speed. A stream that breaks mid-shard is reopened
at the byte where it broke (an http Range request) up to `RETRIES` times in a row
before the shard counts as truncated. Each epoch visits the shards in a fresh
order (seeded by epoch); a host reads every `host_count`-th shard of that order.
The iterator state is (epoch, position in the order, byte offset of the next
sample's first tar header), so resuming reopens one shard there.

Bad input never raises: a missing shard, an unreachable URL, an empty, corrupt
or truncated tar, a sample without image or caption, or a caption that is not
UTF-8 is skipped and reported as `("reason", shard)` in the `_skips` list of the
next record yielded (a finite stream ends with a record {"key": "", "_skips"}
when skips are left over). An epoch of this host that yields nothing is skipped
too; only when every shard this host can be given has failed since its last
record is there no data to train on: a one-line DataError.
"""

from __future__ import annotations

import tarfile
import time
import urllib.error
import urllib.request

import grain
import numpy as np

from vlmjax.data import regions
from vlmjax.data.shards import (IMAGE_EXTS, META_EXTS, TEXT_EXTS, captions_of, is_url, require_filesystem,
                                sample_key)
from vlmjax.errors import DataError

_CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0  # connecting, and waiting for each read of an http(s) shard
RETRIES = 3            # reopenings in a row of a URL whose stream breaks mid-shard
RETRY_WAIT_S = 1.0     # before the first reopening; doubled for each further one


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


def _open_http(url: str, offset: int):
  """(response positioned at `offset`, the shard's size in bytes or None)."""
  request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
  try:
    r = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise FileNotFoundError(url) from None
    if e.code == 416:
      raise EOFError("shard ended before the resume offset") from None
    raise
  length = r.headers.get("Content-Length")
  if r.status == 206:
    if not (r.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
      r.close()
      raise OSError(f"server answered Range bytes={offset}- with {r.headers.get('Content-Range')!r}")
    return r, offset + int(length) if length else None
  try:
    _skip_to(r, offset)  # the server ignored the range: read up to the offset
  except BaseException:
    r.close()
    raise
  return r, int(length) if length else None


def _open_at(path: str, offset: int):
  """(a sequential binary stream of `path` from byte `offset`, the shard's size or None when unknown)."""
  if path.startswith(("http://", "https://")):
    return _open_http(path, offset)
  if is_url(path):
    import fsspec
    f = fsspec.open(path, "rb").open()
  else:
    f = open(path, "rb", buffering=_CHUNK)
  try:
    _skip_to(f, offset)
  except BaseException:
    f.close()
    raise
  return f, None


class ShardReader:
  """Reads one shard from a byte offset. A URL whose stream breaks (an error, or an end before the size the
  server announced) is reopened where it broke, up to RETRIES times in a row; then the error propagates."""

  def __init__(self, path: str, offset: int):
    self.path, self.pos = path, offset
    self._f, self._size = _open_at(path, offset)

  def read(self, n: int = -1) -> bytes:
    for attempt in range(RETRIES + 1):
      try:
        if self._f is None:
          self._f, self._size = _open_at(self.path, self.pos)
        data = self._f.read(n)
        if not data and n != 0 and self._size is not None and self.pos < self._size:
          raise EOFError(f"stream ended at byte {self.pos} of {self._size}")
        self.pos += len(data)
        return data
      except Exception:  # noqa: BLE001 -- network stacks raise many types
        if not is_url(self.path) or attempt == RETRIES:
          raise
        self.close()
        time.sleep(RETRY_WAIT_S * 2 ** attempt)
    raise AssertionError("unreachable")

  def close(self) -> None:
    f, self._f = self._f, None
    if f is not None:
      try:
        f.close()
      except Exception:  # noqa: BLE001 -- closing a broken remote stream may raise anything
        pass


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_shards) if shuffle else np.arange(num_shards)


class TarStream(grain.IterDataset):
  """Raw records {"key", "image" (bytes), "caption", "_shard", "_skips"} from tar shards, plus "captions"
  for a sample with several (`shards.captions_of`: a multi-line `.txt` or a `.json` "captions" list) and
  "regions" for one whose `.json` lists them (`regions.from_json`)."""

  def __init__(self, paths: list[str], *, seed: int, host_index: int = 0, host_count: int = 1,
               shuffle_shards: bool = True, repeat: bool = True):
    super().__init__()
    if len(paths) < host_count:
      raise DataError(f"{len(paths)} tar shard(s) cannot be split over {host_count} hosts; "
                      f"write at least {host_count} shards")
    for path in paths:
      if is_url(path):
        require_filesystem(path, path)
    self.paths, self.seed, self.repeat = list(paths), seed, repeat
    self.host_index, self.host_count, self.shuffle_shards = host_index, host_count, shuffle_shards

  def host_shards(self, epoch: int) -> list[str]:
    order = shard_order(len(self.paths), seed=self.seed, epoch=epoch, shuffle=self.shuffle_shards)
    return [self.paths[i] for i in order[self.host_index::self.host_count]]

  def reachable_shards(self) -> set[str]:
    """Every shard this host is ever given: all of them when shuffled, else its fixed share."""
    return set(self.paths) if self.shuffle_shards else set(self.host_shards(0))

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
    self._shard_read = False       # whether the current shard has yielded a record
    self._failed: set[str] = set()  # shards that yielded nothing since the last record

  # -- state ----------------------------------------------------------------
  def get_state(self) -> dict:
    return {"epoch": self._epoch, "pos": self._pos, "offset": self._offset,
            "epoch_records": self._epoch_records}

  def set_state(self, state: dict) -> None:
    self._close()
    self._epoch, self._pos = int(state["epoch"]), int(state["pos"])
    self._offset, self._epoch_records = int(state["offset"]), int(state["epoch_records"])
    self._shards = self._ds.host_shards(self._epoch)
    self._skips, self._failed, self._shard_read = [], set(), self._offset != 0

  # -- reading --------------------------------------------------------------
  def _close(self) -> None:
    if self._file is not None:
      self._file.close()
    self._file = self._tar = self._pending = None

  def _skip(self, reason: str) -> None:
    self._skips.append((reason, self._shards[self._pos]))

  def _next_shard(self) -> None:
    self._close()
    if not self._shard_read:
      self._failed.add(self._shards[self._pos])
      if self._failed >= self._ds.reachable_shards():
        raise DataError(f"no readable sample in the {len(self._failed)} tar shard(s) host "
                        f"{self._ds.host_index}/{self._ds.host_count} reads (e.g. {self._shards[self._pos]}): "
                        f"{_summary(self._skips)}")
    self._pos, self._offset, self._shard_read = self._pos + 1, 0, False
    if self._pos < len(self._shards):
      return
    if not self._ds.repeat:
      if not self._epoch_records:
        raise DataError(f"no readable sample in the {len(self._shards)} tar shard(s) "
                        f"(e.g. {self._shards[0]}): {_summary(self._skips)}")
      return  # the end of a finite stream
    # An epoch of this host that yielded nothing (its few shards missing or unreachable just now) is skipped;
    # its skips ride on the next record.
    self._epoch, self._pos, self._epoch_records = self._epoch + 1, 0, 0
    self._shards = self._ds.host_shards(self._epoch)

  def _open_shard(self) -> bool:
    path = self._shards[self._pos]
    try:
      self._file = ShardReader(path, self._offset)
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
    self._close()
    return False

  def _next_member(self):
    if self._pending is not None:
      member, self._pending = self._pending, None
      return member
    return self._tar.next()

  def __next__(self) -> dict:
    while True:
      if self._pos >= len(self._shards):  # a finite stream that has ended
        if self._skips:
          skips, self._skips = self._skips, []
          return {"key": "", "_skips": skips}  # the last skips, on a record without an image
        raise StopIteration
      if self._offset < 0:  # the shard was read to its end
        self._next_shard()
        continue
      if self._tar is None and not self._open_shard():
        self._next_shard()
        continue
      record = self._read_sample()
      if record is not None:
        self._epoch_records += 1
        self._shard_read, self._failed = True, set()
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
        member_key, ext = sample_key(member.name)
        if key is not None and member_key != key:
          self._pending, self._offset = member, self._base + member.offset  # next sample starts here
          record = self._finish(key, group)
          if record is not None:
            return record
          group, key, self._pending = {}, None, None  # a skipped sample: go on with this member
        if not member.isfile():
          continue
        key = member_key
        if ext in IMAGE_EXTS or ext in TEXT_EXTS or ext in META_EXTS:
          group[ext] = self._tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, ValueError):
      self._skip("truncated_shard")
    except Exception:  # noqa: BLE001 -- a remote stream that breaks mid-shard (after its retries)
      self._skip("unreachable" if is_url(self._shards[self._pos]) else "truncated_shard")
    return None

  def _finish(self, key: str, group: dict) -> dict | None:
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    if image is None:
      self._skip("no_image")
      return None
    caption, captions, reason = captions_of(group)
    if reason:
      self._skip(reason)
      return None
    shard = self._shards[self._pos]
    return {"key": key, "image": image, "caption": caption, **({"captions": captions} if captions else {}),
            **regions.from_json(group.get("json"), f"sample {key!r} in {shard}"), "_shard": shard}

  def close(self) -> None:
    self._close()
    super().close()


def _summary(skips: list[tuple[str, str]]) -> str:
  counts: dict[str, int] = {}
  for reason, _ in skips:
    counts[reason] = counts.get(reason, 0) + 1
  return ", ".join(f"{r}: {n}" for r, n in sorted(counts.items())) or "no samples"
