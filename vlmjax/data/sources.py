"""Data sources named by spec strings.

  synthetic:shapes[:SPLIT]          the procedural shapes set (random access)
  tar:PATTERN                       img2dataset tar shards: a local path, glob or brace range
                                    (`shards/{00000..00127}.tar`) or a URL (http(s)://, gs://, s3://)
  arrayrecord:PATTERN               ArrayRecord files of serialised examples (random access)
  tfds:NAME[/CONFIG][:SPLIT]        a TFDS dataset prepared as ArrayRecord, read without TensorFlow

Every record is {"key", "image" (encoded bytes or uint8 [H, W, 3]), "caption"}.
`open_source` returns a random-access source (`__len__`, `__getitem__`) for all
of them except remote tar shards, which are only streamed (`tar_stream.TarStream`).
The training pipeline always streams tar shards (see `pipeline.py`).
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
KINDS = "synthetic:shapes[:SPLIT], tar:PATTERN, arrayrecord:PATTERN, tfds:NAME[/CONFIG][:SPLIT]"


class DataError(ConfigError):
  """A user error in a data spec or unusable data (one line)."""


def is_url(path: str) -> bool:
  return "://" in path


def _expand_braces(pattern: str) -> list[str]:
  m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
  if not m:
    return [pattern]
  lo, hi = m.group(1), m.group(2)
  width = len(lo) if len(lo) == len(hi) else 0
  out = []
  for i in range(int(lo), int(hi) + 1):
    out += _expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
  return out


def expand_pattern(pattern: str) -> list[str]:
  """Brace ranges and globs -> paths or URLs; a DataError when nothing matches.

  Paths of a brace range that do not exist are kept (a reader counts them as
  missing shards) unless none exists. http(s) URLs are not checked here.
  """
  paths = []
  for p in _expand_braces(pattern):
    has_glob = any(c in p for c in "*?[")
    if p.startswith(("http://", "https://")):
      if has_glob:
        raise DataError(f"data pattern {pattern!r}: http(s) URLs cannot hold globs; use a brace range")
      paths.append(p)
    elif is_url(p):
      if has_glob:
        import fsspec
        protocol = p.split("://", 1)[0]
        paths += sorted(f if is_url(f) else f"{protocol}://{f}" for f in fsspec.filesystem(protocol).glob(p))
      else:
        paths.append(p)
    elif has_glob:
      paths += sorted(glob.glob(p))
    else:
      paths.append(p)
  if not paths or all(not is_url(p) and not os.path.exists(p) for p in paths):
    raise DataError(f"data pattern {pattern!r} matches no file")
  return paths


class TarSource:
  """Random access over local tar shards in the img2dataset layout (KEY.jpg + KEY.txt), indexed once.

  For evaluation sets; training streams tar shards instead (no index, exact resume by byte offset).
  """

  def __init__(self, pattern: str):
    self.paths = expand_pattern(pattern)
    if any(is_url(p) for p in self.paths):
      raise DataError(f"tar pattern {pattern!r}: random access needs local shards; stream URLs instead")
    self.index: list[tuple[int, str, int, int, int, int]] = []  # path idx, key, img off/size, txt off/size
    self.skipped = {"no_image": 0, "no_caption": 0, "bad_shard": 0, "missing_shard": 0}
    for p, path in enumerate(self.paths):
      try:
        self._index_shard(p, path)
      except FileNotFoundError:
        self.skipped["missing_shard"] += 1
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
    return {"key": key, "image": os.pread(fd, img_size, img_off), "caption": caption,
            "_shard": self.paths[p]}

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_local"]  # file descriptors are per process and per thread
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def __repr__(self) -> str:
    return f"TarSource({len(self.paths)} shards, {len(self.index)} examples)"


def parse_tfds(spec: str) -> tuple[str, str]:
  """`tfds:NAME[/CONFIG][:SPLIT]` -> (name, split); split defaults to train."""
  rest = spec.partition(":")[2]
  name, _, split = rest.partition(":")
  if not name:
    raise DataError(f"data spec {spec!r} names no dataset; expected tfds:NAME[/CONFIG][:SPLIT]")
  return name, split or "train"


def open_source(spec: str, *, image_size: int, data_dir: str | None = None):
  """Parses a spec string into a source: random access, or a stream for remote tar shards."""
  kind, _, rest = spec.partition(":")
  if kind == "synthetic":
    name, _, split = rest.partition(":")
    if name != "shapes":
      raise DataError(f"unknown synthetic set {name!r} in {spec!r}; valid: synthetic:shapes[:train|validation|test]")
    if (split or "train") not in synthetic.SEED_OF_SPLIT:
      raise DataError(f"unknown split {split!r} in {spec!r}; valid: {', '.join(synthetic.SEED_OF_SPLIT)}")
    return synthetic.ShapesSource(split or "train", image_size=image_size)
  if kind in ("tar", "arrayrecord") and not rest:
    raise DataError(f"data spec {spec!r} names no path; expected {kind}:PATTERN")
  if kind == "tar":
    paths = expand_pattern(rest)
    if any(is_url(p) for p in paths):
      from vlmjax.data import tar_stream
      return tar_stream.TarStream(paths, seed=0, shuffle_shards=False, repeat=False)
    return TarSource(rest)
  if kind == "arrayrecord":
    from vlmjax.data import records
    return records.ArrayRecordSource(expand_pattern(rest))
  if kind == "tfds":
    from vlmjax.data import records
    return records.TfdsSource(*parse_tfds(spec), data_dir=data_dir)
  raise DataError(f"unknown data source {spec!r}; valid kinds: {KINDS}")
