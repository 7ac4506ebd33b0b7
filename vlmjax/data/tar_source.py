"""Random access over local tar shards in the img2dataset layout, for evaluation sets.

Training streams tar shards instead (`tar_stream.TarStream`: no index, exact resume by byte
offset); both group members, read captions and skip bad samples the same way (`shards`).
`TarSource` is also the base of other indexed tar layouts (`bench_sources.WdsSource`): a
subclass names the members it reads while indexing (`READ`) and turns them into record
fields (`_fields`).
"""

from __future__ import annotations

import logging
import os
import tarfile
import threading
import weakref

from vlmjax.data import regions
from vlmjax.data.shards import IMAGE_EXTS, META_EXTS, TEXT_EXTS, captions_of, expand_pattern, is_url, sample_key
from vlmjax.errors import DataError

log = logging.getLogger(__name__)


def _close_fds(fds: dict[int, int]) -> None:
  while fds:
    os.close(fds.popitem()[1])


class TarSource:
  """Random access over local tar shards in the img2dataset layout (KEY.jpg + KEY.txt), indexed once.

  Samples are grouped and checked exactly as `tar_stream.TarStream` does (consecutive
  members with the same `sample_key`; a missing image, a blank or non-UTF-8 caption
  is skipped; a truncated shard keeps its samples before the break). A sample with
  several captions (a `.txt` of several lines, or a `.json` "captions" list) has
  "captions" (all of them) and "caption" (the first); a `.json` "regions" list becomes "regions"
  (`regions.from_json`: bad ones get the bad-regions marker, the sample is kept). What was
  skipped is counted in `skipped`, shown by `repr` and logged once when opened.
  For evaluation sets; training streams tar shards instead (no index, exact resume by byte offset).
  Reads share one descriptor per shard (`os.pread` has no file position), closed by
  `close()` or when the source is garbage collected.
  """

  NAMED = "tar pattern"                  # how messages name `pattern`
  WANTED = "image-caption pairs"         # what a usable sample is, for messages
  READ = TEXT_EXTS + META_EXTS           # the members read while indexing (images: only their place)

  def __init__(self, pattern: str, paths: list[str] | None = None):
    self.pattern, self.paths = pattern, expand_pattern(pattern) if paths is None else list(paths)
    if any(is_url(p) for p in self.paths):
      raise DataError(f"{self.NAMED} {pattern!r}: random access needs local shards; stream URLs instead")
    self.index: list[tuple[int, str, int, int, dict]] = []  # path idx, key, image offset, image size, fields
    self.skipped: dict[str, int] = {}
    for p, path in enumerate(self.paths):
      self._index_shard(p, path)
    if not self.index:
      raise DataError(f"{self.NAMED} {pattern!r}: no {self.WANTED} in {len(self.paths)} shard(s)"
                      f"{'; skipped ' + self._skip_summary() if self.skipped else ''}")
    if self.skipped:
      log.warning("data: %s: skipped %s while indexing", self, self._skip_summary())
    self._open_fds()

  def _open_fds(self) -> None:
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()
    self._finalizer = weakref.finalize(self, _close_fds, self._fds)

  def _skip(self, reason: str) -> None:
    self.skipped[reason] = self.skipped.get(reason, 0) + 1

  def _skip_summary(self) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items()))

  def _index_shard(self, p: int, path: str) -> None:
    try:
      size = os.path.getsize(path)
      tar = tarfile.open(path, "r:")
    except FileNotFoundError:
      return self._skip("missing_shard")
    except tarfile.ReadError as e:
      return self._skip("empty_shard" if "empty" in str(e) else "bad_shard")
    except (tarfile.TarError, OSError, EOFError):
      return self._skip("bad_shard")
    key, group = None, {}
    with tar:
      try:
        for member in tar:
          member_key, ext = sample_key(member.name)
          if key is not None and member_key != key:
            self._add(p, key, group)
            key, group = None, {}
          if not member.isfile():
            continue
          key = member_key
          if member.offset_data + member.size > size:
            raise EOFError("member data past the end of the shard")
          if ext in IMAGE_EXTS:
            group[ext] = (member.offset_data, member.size)
          elif ext in self.READ:
            group[ext] = tar.extractfile(member).read()
      except (tarfile.TarError, OSError, EOFError):
        return self._skip("truncated_shard")  # the sample being read at the break is dropped, as TarStream does
    if key is not None:
      self._add(p, key, group)

  def _add(self, p: int, key: str, group: dict) -> None:
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    if image is None:
      return self._skip("no_image")
    fields = self._fields(p, key, group)
    if isinstance(fields, str):
      return self._skip(fields)
    self.index.append((p, key, *image, fields))

  def _fields(self, p: int, key: str, group: dict) -> dict | str:
    """The record fields of a sample from its `READ` members, or the reason it is skipped."""
    caption, captions, reason = captions_of(group)
    if reason:
      return reason
    return {"caption": caption, **({"captions": captions} if captions else {}),
            **regions.from_json(group.get("json"), f"sample {key!r} in {self.paths[p]}")}

  def _fd(self, p: int) -> int:
    fd = self._fds.get(p)
    if fd is None:
      with self._lock:
        fd = self._fds.get(p)
        if fd is None:
          fd = self._fds[p] = os.open(self.paths[p], os.O_RDONLY)
    return fd

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> dict:
    p, key, offset, size, fields = self.index[int(i)]
    return {"key": key, "image": os.pread(self._fd(p), size, offset), **fields, "_shard": self.paths[p]}

  def close(self) -> None:
    """Closes the shards' descriptors (a later read reopens them)."""
    with self._lock:
      _close_fds(self._fds)

  def __enter__(self) -> "TarSource":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getstate__(self):
    state = dict(self.__dict__)
    for name in ("_fds", "_lock", "_finalizer"):  # descriptors are per process
      del state[name]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._open_fds()

  def __repr__(self) -> str:
    skipped = f"; skipped {self._skip_summary()}" if self.skipped else ""
    return f"{type(self).__name__}({self.pattern!r}: {len(self.paths)} shards, {len(self.index)} examples{skipped})"
