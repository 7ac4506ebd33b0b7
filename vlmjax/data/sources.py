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
import logging
import os
import re
import tarfile
import threading
import weakref

from vlmjax.errors import ConfigError, DataError
from vlmjax.data import synthetic

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption")
log = logging.getLogger(__name__)
KINDS = "synthetic:shapes[:SPLIT], tar:PATTERN, arrayrecord:PATTERN, tfds:NAME[/CONFIG][:SPLIT]"


def is_url(path: str) -> bool:
  return "://" in path


def sample_key(name: str) -> tuple[str, str]:
  """A tar member name -> (sample key, lower-case extension), as img2dataset and webdataset group them:
  `./shard/000123.jpg` -> ("000123", "jpg"). Both tar readers use it."""
  key, _, ext = os.path.basename(name).partition(".")
  return key, ext.lower()


def caption_of(text: bytes | None) -> tuple[str | None, str | None]:
  """Caption bytes -> (caption, None), or (None, the skip reason): missing or blank, or not UTF-8."""
  if text is None:
    return None, "no_caption"
  try:
    caption = text.decode("utf-8").strip()
  except UnicodeDecodeError:
    return None, "bad_text"
  return (caption, None) if caption else (None, "no_caption")


def require_filesystem(path: str, pattern: str) -> None:
  """A one-line DataError up front when the fsspec backend of a gs://, s3://, ... URL is not installed."""
  protocol = path.split("://", 1)[0]
  if protocol in ("http", "https"):
    return  # read with the standard library
  import fsspec
  from fsspec.registry import known_implementations
  try:
    fsspec.get_filesystem_class(protocol)
  except ImportError:
    hint = known_implementations.get(protocol, {}).get("err") or f"install the fsspec backend of {protocol}://"
    raise DataError(f"data pattern {pattern!r}: cannot read {protocol}:// URLs here: {hint}") from None
  except ValueError:
    raise DataError(f"data pattern {pattern!r}: unknown URL protocol {protocol!r}; valid: local paths, "
                    f"http(s)://, gs://, s3:// and the other fsspec protocols") from None


_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def _expand_braces(pattern: str) -> list[str]:
  """Shell-style braces: ranges `{000..127}` (zero-padded like bash, descending allowed) and lists `{a,b}`."""
  for m in re.finditer(r"\{([^{}]*)\}", pattern):
    body, r = m.group(1), _RANGE.fullmatch(m.group(1))
    if r:
      lo, hi = r.groups()
      padded = any(len(v) > 1 and v.startswith("0") for v in (lo, hi))
      width = max(len(lo), len(hi)) if padded else 0
      step = 1 if int(hi) >= int(lo) else -1
      items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
      items = body.split(",")
    else:
      continue  # a literal brace
    return [q for item in items for q in _expand_braces(pattern[:m.start()] + item + pattern[m.end():])]
  return [pattern]


def expand_pattern(pattern: str) -> list[str]:
  """Brace ranges and lists, and globs -> paths or URLs; a DataError when nothing matches.

  Paths of a brace range that do not exist are kept (a reader counts them as
  missing shards) unless none exists. http(s) URLs are not checked here; for
  other URLs the fsspec backend must be installed.
  """
  paths = []
  for p in _expand_braces(pattern):
    has_glob = any(c in p for c in "*?[")
    if p.startswith(("http://", "https://")):
      if has_glob:
        raise DataError(f"data pattern {pattern!r}: http(s) URLs cannot hold globs; use a brace range")
      paths.append(p)
    elif is_url(p):
      require_filesystem(p, pattern)
      if has_glob:
        import fsspec
        protocol = p.split("://", 1)[0]
        paths += sorted(f if is_url(f) else f"{protocol}://{f}" for f in fsspec.filesystem(protocol).glob(p))
      else:
        paths.append(p)
    elif has_glob:
      paths += sorted(glob.glob(p))
    elif os.path.isdir(p):
      raise DataError(f"data pattern {pattern!r}: {p!r} is a directory; name its files, "
                      f"e.g. {os.path.join(p, '*.tar')!r}")
    else:
      paths.append(p)
  if not paths or all(not is_url(p) and not os.path.exists(p) for p in paths):
    tried = f" (none of its {len(paths)} path(s) exists, e.g. {paths[0]!r})" if paths else ""
    raise DataError(f"data pattern {pattern!r} matches no file{tried}")
  return paths


def _close_fds(fds: dict[int, int]) -> None:
  while fds:
    os.close(fds.popitem()[1])


class TarSource:
  """Random access over local tar shards in the img2dataset layout (KEY.jpg + KEY.txt), indexed once.

  Samples are grouped and checked exactly as `tar_stream.TarStream` does (consecutive
  members with the same `sample_key`; a missing image, a blank or non-UTF-8 caption
  is skipped; a truncated shard keeps its samples before the break). What was
  skipped is counted in `skipped`, shown by `repr` and logged once when opened.
  For evaluation sets; training streams tar shards instead (no index, exact resume by byte offset).
  Reads share one descriptor per shard (`os.pread` has no file position), closed by
  `close()` or when the source is garbage collected.
  """

  def __init__(self, pattern: str):
    self.pattern, self.paths = pattern, expand_pattern(pattern)
    if any(is_url(p) for p in self.paths):
      raise DataError(f"tar pattern {pattern!r}: random access needs local shards; stream URLs instead")
    self.index: list[tuple[int, str, int, int, str]] = []  # path idx, key, image offset, image size, caption
    self.skipped: dict[str, int] = {}
    for p, path in enumerate(self.paths):
      self._index_shard(p, path)
    if not self.index:
      raise DataError(f"tar pattern {pattern!r}: no image-caption pairs in {len(self.paths)} shard(s)"
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
          elif ext in TEXT_EXTS:
            group[ext] = tar.extractfile(member).read()
      except (tarfile.TarError, OSError, EOFError):
        return self._skip("truncated_shard")  # the sample being read at the break is dropped, as TarStream does
    if key is not None:
      self._add(p, key, group)

  def _add(self, p: int, key: str, group: dict) -> None:
    image = next((group[e] for e in IMAGE_EXTS if e in group), None)
    if image is None:
      return self._skip("no_image")
    caption, reason = caption_of(next((group[e] for e in TEXT_EXTS if e in group), None))
    if reason:
      return self._skip(reason)
    self.index.append((p, key, *image, caption))

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
    p, key, offset, size, caption = self.index[int(i)]
    return {"key": key, "image": os.pread(self._fd(p), size, offset), "caption": caption,
            "_shard": self.paths[p]}

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
    return f"TarSource({self.pattern!r}: {len(self.paths)} shards, {len(self.index)} examples{skipped})"


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
