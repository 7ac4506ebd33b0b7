"""Regions of a record: boxes with a text each (LocCa's referring expressions and grounded captions).

The contract. A raw record may carry `"regions"`: a list of `{"box": [x0, y0, x1, y1], "text": str}`,
the box normalised to the image's width and height as displayed (after the EXIF orientation):
x to the right, y down, 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (floats). The key is absent when
a source has no regions for the record; `[]` is an image whose source lists regions but none here.
Every source validates what it reads with `fields` (or `check`), so a reader may rely on this shape.

Bad regions never stop a stream. A source that reads a regions value that is not valid gives the
record `"regions": None` and `"_bad_regions": "<one-line message>"` (`BAD_KEY`; what was wrong,
where, what is valid), and keeps its image and caption. A batcher that needs regions counts such a
record as skipped with reason `bad_region` (`SKIP_REASON`); one that does not may train on it.
`vlmjax data convert` does not write such a record (it counts it as skipped).

Storage. In img2dataset tar shards the regions are the sample's `.json` "regions" list, as above.
In ArrayRecord / TFDS examples they are TFDS's layout of `Sequence({"bbox": BBoxFeature(), "text":
Text()})`: the float feature `regions/bbox` (the boxes flattened, each in TFDS's order `(ymin, xmin,
ymax, xmax)`, float32) and the bytes feature `regions/text` (UTF-8), so a prepared TFDS set with
such a feature reads the same way. Coordinates come back as the shortest decimal of their float32
value (0.1 stays 0.1; k / 2^n exactly).

`crop` maps regions of the original image to a crop of it, given in the original's pixels, as
`transforms.ImageDecoder.decode` reports the crop it took.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from vlmjax.errors import DataError

BAD_KEY = "_bad_regions"
SKIP_REASON = "bad_region"
VALID = ("valid: a list of {\"box\": [x0, y0, x1, y1], \"text\": non-empty str}, the box of 4 finite numbers "
         "normalised to the image, 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
EPS = 1e-6  # coordinates this far outside [0, 1] (float rounding of a converted set) are clipped, not refused


class BadRegion(DataError):
  """A regions value that breaks the contract (module docstring); the message is one line."""


def _short(value: Any, n: int = 80) -> str:
  text = repr(value).replace("\n", " ")
  return text if len(text) <= n else text[:n - 3] + "..."


def _box(box: Any, where: str) -> list[float]:
  """One box -> 4 floats in [0, 1], not inverted or empty; BadRegion naming `where` otherwise."""
  if isinstance(box, np.ndarray):
    box = box.tolist()
  if not isinstance(box, (list, tuple)) or len(box) != 4:
    raise BadRegion(f"{where}: box {_short(box)} is not 4 numbers; {VALID}")
  if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
    raise BadRegion(f"{where}: box {_short(box)} holds a value that is not a finite number; {VALID}")
  if not all(-EPS <= v <= 1 + EPS for v in box):
    raise BadRegion(f"{where}: box {_short(box)} is outside [0, 1] (boxes are normalised to the image's "
                    f"width and height, not pixels); {VALID}")
  x0, y0, x1, y1 = (min(1.0, max(0.0, float(v))) for v in box)
  if not (x0 < x1 and y0 < y1):
    raise BadRegion(f"{where}: box {_short(box)} is inverted or empty (needs x0 < x1 and y0 < y1); {VALID}")
  return [x0, y0, x1, y1]


def check(regions: Any, where: str) -> list[dict]:
  """A regions value -> the normalised list [{"box": [4 floats], "text": str (stripped)}]; a one-line
  BadRegion naming `where` (e.g. "record 'k' in shard.tar"), the bad region and what is valid."""
  if not isinstance(regions, (list, tuple)):
    raise BadRegion(f"{where}: regions {_short(regions)} is not a list; {VALID}")
  out = []
  for i, region in enumerate(regions):
    at = f"{where}: region {i}"
    if not isinstance(region, dict) or "box" not in region:
      raise BadRegion(f"{at} {_short(region)} is not a dict with a box; {VALID}")
    text = region.get("text")
    if not isinstance(text, str) or not text.strip():
      raise BadRegion(f"{at} has text {_short(text)}, not a non-empty string; {VALID}")
    out.append({"box": _box(region["box"], at), "text": text.strip()})
  return out


def fields(value: Any, where: str) -> dict:
  """The record fields for a regions value a source read: {} for None (no regions), {"regions":
  checked} when valid, else the bad-regions marker {"regions": None, BAD_KEY: message}."""
  if value is None:
    return {}
  try:
    return {"regions": check(value, where)}
  except BadRegion as e:
    return {"regions": None, BAD_KEY: str(e)}


def from_json(meta: bytes | None, where: str) -> dict:
  """`fields` of the "regions" list in an img2dataset `.json` member (bytes), {} when it has none.
  Metadata that mentions regions but is not a JSON object gets the bad-regions marker."""
  if not meta or b'"regions"' not in meta:
    return {}
  try:
    parsed = json.loads(meta)
  except ValueError as e:  # also not UTF-8
    return {"regions": None, BAD_KEY: f"{where}: its .json is not valid JSON ({type(e).__name__}), "
                                      f"so its regions are unreadable; {VALID}"}
  return fields(parsed.get("regions") if isinstance(parsed, dict) else None, where)


def _decimal(v: float) -> float:
  """A float32 coordinate -> the float64 of its shortest decimal (what was written, for decimals)."""
  return float(str(np.float32(v)))


def from_tfds(bbox: Any, texts: Any, where: str) -> dict:
  """`fields` of TFDS-layout regions: boxes (ymin, xmin, ymax, xmax), [N, 4] or flattened [4N], and N
  texts (bytes or str)."""
  flat = np.asarray(bbox, np.float64).reshape(-1)
  texts = list(texts)
  if flat.size != 4 * len(texts):
    return {"regions": None, BAD_KEY: f"{where}: regions/bbox holds {flat.size} numbers for {len(texts)} "
                                      f"regions/text entries; expected 4 per text; {VALID}"}
  try:
    texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
  except UnicodeDecodeError:
    return {"regions": None, BAD_KEY: f"{where}: a regions/text entry is not UTF-8; {VALID}"}
  boxes = [[_decimal(v) for v in flat[4 * i:4 * i + 4]] for i in range(len(texts))]
  return fields([{"box": [b[1], b[0], b[3], b[2]], "text": t} for b, t in zip(boxes, texts)], where)


def to_tfds(regions: list[dict]) -> tuple[list[float], list[bytes]]:
  """Checked regions -> (the boxes flattened in TFDS's (ymin, xmin, ymax, xmax) order, UTF-8 texts)."""
  flat = [v for r in regions for v in (r["box"][1], r["box"][0], r["box"][3], r["box"][2])]
  return flat, [r["text"].encode("utf-8") for r in regions]


def crop(regions: list[dict], crop_box: tuple[int, int, int, int], width: int, height: int,
         min_visible: float = 0.5) -> list[dict]:
  """Regions of a `width` x `height` image -> regions of its crop `crop_box` = (x0, y0, w, h) in the
  image's pixels (`transforms.crop_box`), each box clipped to the crop and normalised to it. A region
  of which less than `min_visible` of the area is inside the crop (or none of it) is dropped."""
  cx, cy, cw, ch = crop_box
  if cw <= 0 or ch <= 0 or width <= 0 or height <= 0:
    raise ValueError(f"crop {crop_box} of a {width}x{height} image: sizes must be positive")
  if not 0 <= min_visible <= 1:
    raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
  out = []
  for region in regions:
    x0, y0, x1, y1 = region["box"]
    x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    ix0, ix1 = max(x0, cx), min(x1, cx + cw)
    iy0, iy1 = max(y0, cy), min(y1, cy + ch)
    if ix1 <= ix0 or iy1 <= iy0:
      continue
    if (ix1 - ix0) * (iy1 - iy0) < min_visible * (x1 - x0) * (y1 - y0):
      continue
    box = [(ix0 - cx) / cw, (iy0 - cy) / ch, (ix1 - cx) / cw, (iy1 - cy) / ch]
    out.append({**region, "box": [min(1.0, max(0.0, v)) for v in box]})
  return out
