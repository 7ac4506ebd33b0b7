"""Data sources named by spec strings: `synthetic:shapes[:SPLIT]` and `tar:PATTERN`.

Every source here is random access (grain's `RandomAccessDataSource` protocol:
`__len__`, `__getitem__`) and yields {"key", "image" (bytes or uint8 array),
"caption"}. Local tar shards in the img2dataset layout are indexed once (tar
headers only) and read with `os.pread`, so shuffling is a global permutation and
resuming is exact.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
import threading

from vlmjax.config import ConfigError
from vlmjax.data import synthetic

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption")


class DataError(ConfigError):
  """A user error in a data spec (one line)."""


def expand_pattern(pattern: str) -> list[str]:
  """Expands brace ranges (`{00000..00127}`) and globs; errors when nothing matches."""
  m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
  if m:
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if len(lo) == len(hi) else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
      out += expand_pattern(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out
  if any(c in pattern for c in "*?["):
    paths = sorted(glob.glob(pattern))
  else:
    paths = [pattern] if os.path.exists(pattern) else []
  if not paths:
    raise DataError(f"data pattern {pattern!r} matches no file")
  return paths


class TarSource:
  """Random access over local tar shards in the img2dataset layout (KEY.jpg + KEY.txt)."""

  def __init__(self, pattern: str):
    self.paths = expand_pattern(pattern)
    self.index: list[tuple[int, str, int, int, int, int]] = []  # path idx, key, img off/size, txt off/size
    self.skipped = {"no_image": 0, "no_caption": 0, "bad_shard": 0}
    for p, path in enumerate(self.paths):
      try:
        self._index_shard(p, path)
      except (tarfile.TarError, OSError, EOFError):
        self.skipped["bad_shard"] += 1
    if not self.index:
      raise DataError(f"tar pattern {pattern!r}: no image-caption pairs in {len(self.paths)} shard(s)")
    self._local = threading.local()

  def _index_shard(self, p: int, path: str) -> None:
    groups: dict[str, dict] = {}
    with tarfile.open(path, "r:") as tar:
      for member in tar:
        if not member.isfile():
          continue
        key, _, ext = member.name.partition(".")
        ext = ext.lower()
        slot = "image" if ext in IMAGE_EXTS else "text" if ext in TEXT_EXTS else None
        if slot:
          groups.setdefault(key, {})[slot] = (member.offset_data, member.size)
    for key, g in groups.items():
      if "image" not in g:
        self.skipped["no_image"] += 1
      elif "text" not in g:
        self.skipped["no_caption"] += 1
      else:
        self.index.append((p, os.path.basename(key), *g["image"], *g["text"]))

  def _fd(self, p: int) -> int:
    fds = getattr(self._local, "fds", None)
    if fds is None:
      fds = self._local.fds = {}
    if p not in fds:
      fds[p] = os.open(self.paths[p], os.O_RDONLY)
    return fds[p]

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, i: int) -> dict:
    p, key, img_off, img_size, txt_off, txt_size = self.index[int(i)]
    fd = self._fd(p)
    caption = os.pread(fd, txt_size, txt_off).decode("utf-8", errors="replace").strip()
    return {"key": key, "image": os.pread(fd, img_size, img_off), "caption": caption}

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_local"]  # file descriptors are per process and per thread
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __repr__(self) -> str:
    return f"TarSource({len(self.paths)} shards, {len(self.index)} examples)"


def open_source(spec: str, *, image_size: int):
  """Parses a spec string into a random-access source."""
  kind, _, rest = spec.partition(":")
  if kind == "synthetic":
    name, _, split = rest.partition(":")
    if name != "shapes":
      raise DataError(f"unknown synthetic set {name!r} in {spec!r}; valid: synthetic:shapes[:train|validation|test]")
    return synthetic.ShapesSource(split or "train", image_size=image_size)
  if kind == "tar":
    if not rest:
      raise DataError(f"data spec {spec!r} names no path; expected tar:PATTERN")
    return TarSource(rest)
  raise DataError(f"unknown data source {spec!r}; valid kinds: synthetic:shapes, tar:PATTERN")
