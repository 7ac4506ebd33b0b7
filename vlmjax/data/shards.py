"""The basics every reader of image-text files shares: file patterns, tar member naming, caption bytes.

`expand_pattern` turns `shards/{00000..00127}.tar`, globs and URLs into a list of paths;
`sample_key` groups tar members into samples as img2dataset and webdataset do; `caption_of`
decides whether caption bytes are usable and `captions_of` reads a sample's caption(s). Imports no other data module, so the tar readers
(`tar_source.TarSource`, `tar_stream.TarStream`) and the ArrayRecord / TFDS readers share it
without importing each other.
"""

from __future__ import annotations

import glob
import json
import os
import re

from vlmjax.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "caption")
META_EXTS = ("json",)  # img2dataset's per-sample metadata; read for its "captions" and "regions" lists


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


def captions_of(group: dict[str, bytes]) -> tuple[str | None, list[str] | None, str | None]:
  """A sample's text members (extension -> bytes) -> (caption, captions, None), or (None, None, skip reason).

  The captions are a `.json` member's "captions" list (non-empty strings) when it has one, else the
  non-empty lines of the `.txt` (or `.caption`) member: one caption per line, as CLIP_benchmark's
  retrieval sets store them. `caption` is the first; `captions` is all of them when there are
  several, else None. Training draws one of `captions` per visit (`batcher`)."""
  listed = _json_captions(group.get("json"))
  if listed:
    lines = listed
  else:
    text, reason = caption_of(next((group[e] for e in TEXT_EXTS if e in group), None))
    if reason:
      return None, None, reason
    lines = [line.strip() for line in text.split("\n") if line.strip()]
  return lines[0], (lines if len(lines) > 1 else None), None


def _json_captions(data: bytes | None) -> list[str] | None:
  if not data or b'"captions"' not in data:  # img2dataset's metadata: parsed only when it lists captions
    return None
  try:
    meta = json.loads(data)
  except ValueError:  # also not UTF-8: metadata, not worth skipping the sample for
    return None
  listed = meta.get("captions") if isinstance(meta, dict) else None
  if not isinstance(listed, list):
    return None
  return [c.strip() for c in listed if isinstance(c, str) and c.strip()] or None


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
