"""The procedural "shapes" sets: coloured shapes on a dark background, with captions.

Every example is a pure function of (seed, index), so the set needs no download,
any split is reproducible, and a random-access source over it is free. Classes
for zero-shot evaluation are colour x shape.

  shapes        one object per image (`example`)
  shapes_multi  2 to 4 objects per image (`multi_example`), each in its own cell of a 3x3 grid (never
                touching another), of distinct colours (so "red circle" names exactly one object), with
                `regions` (one per object: the tight box of its drawn pixels and "small red circle")
                and a `segmentation` mask; the caption names them all, largest first, and `label` is
                the class of the first (largest) one. Captions fit `MULTI_CAPTION_CHARS` characters
                (a 64-token byte-level context with bos and eos): as much detail as fits, from
                "a small red circle top left, a large blue square center" down to
                "red circle, blue square" (and "," without a space in the rare longest case).
  shapes_wide   `example`'s objects and captions on images of mixed aspect ratios (`wide_example`): width /
                height drawn from `WIDE_RATIOS` per example, about image_size^2 pixels each (NaFlex's data)
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 220, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
TEMPLATES = ("a {size} {color} {shape}, {position}",   # at most 37 characters
             "{position}: {size} {color} {shape}",
             "{size} {color} {shape} at {position}")
CLASS_NAMES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
SEED_OF_SPLIT = {"train": 0, "validation": 1, "test": 2}
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
MULTI_RADIUS = {"small": 0.075, "large": 0.13}  # x image size; with the jitter an object stays in its cell
MULTI_JITTER = 0.015                            # (extent <= r: 0.13 * 1.1 + 0.015 < 1/6)
MULTI_CAPTION_CHARS = 62
MULTI_MIN_SIZE = 32                             # below it a small cross can miss every pixel centre
WIDE_RATIOS = (1 / 2, 2 / 3, 1.0, 3 / 2, 2.0)   # shapes_wide's width / height, one drawn per example


def _mask(shape: str, size: int, cx: float, cy: float, r: float, width: int | None = None) -> np.ndarray:
  """[size, width (default: size)] bool: the pixels whose centres lie inside the shape."""
  y, x = np.mgrid[:size, :width or size].astype(np.float32) + 0.5
  dx, dy = x - cx, y - cy
  if shape == "circle":
    return dx**2 + dy**2 <= r**2
  if shape == "square":
    return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
  if shape == "triangle":
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= 0.5 * (dy + r))
  if shape == "cross":
    return ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r))
  raise ValueError(f"unknown shape {shape!r}")


def example(index: int, *, seed: int = 0, image_size: int = 32) -> dict:
  """Returns {"key", "image" (uint8 [S, S, 3]), "caption", "label"} for one index."""
  rng = np.random.default_rng([seed, index])
  color = list(COLORS)[rng.integers(len(COLORS))]
  shape = SHAPES[rng.integers(len(SHAPES))]
  size = SIZES[rng.integers(len(SIZES))]
  position = list(POSITIONS)[rng.integers(len(POSITIONS))]
  template = TEMPLATES[rng.integers(len(TEMPLATES))]
  s = image_size
  fx, fy = POSITIONS[position]
  cx = (fx + rng.uniform(-0.05, 0.05)) * s
  cy = (fy + rng.uniform(-0.05, 0.05)) * s
  r = (0.12 if size == "small" else 0.22) * s * rng.uniform(0.9, 1.1)
  background = rng.integers(20, 70)
  image = np.full((s, s, 3), background, np.float32) + rng.normal(0, 6, (s, s, 3))
  image[_mask(shape, s, cx, cy, r)] = COLORS[color]
  return {
      "key": f"{seed:02d}{index:09d}",
      "image": np.clip(image, 0, 255).astype(np.uint8),
      "caption": template.format(size=size, color=color, shape=shape, position=position),
      "label": list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape),
  }


def wide_example(index: int, *, seed: int = 0, image_size: int = 32) -> dict:
  """Returns {"key", "image" (uint8 [H, W, 3]), "caption", "label"} for one index: `example`'s kinds of
  object, caption and label on an image of width / height drawn from `WIDE_RATIOS` and about
  image_size^2 pixels (H = round(S / sqrt(ratio)), W = round(S * sqrt(ratio))). Positions are fractions
  of each side, sizes of the shorter one. Draws from its own stream, so `example` is unchanged."""
  rng = np.random.default_rng([seed, index, 2])
  ratio = WIDE_RATIOS[rng.integers(len(WIDE_RATIOS))]
  h, w = max(1, round(image_size / ratio**0.5)), max(1, round(image_size * ratio**0.5))
  color, shape = list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
  size, position = SIZES[rng.integers(len(SIZES))], list(POSITIONS)[rng.integers(len(POSITIONS))]
  template = TEMPLATES[rng.integers(len(TEMPLATES))]
  fx, fy = POSITIONS[position]
  cx, cy = (fx + rng.uniform(-0.05, 0.05)) * w, (fy + rng.uniform(-0.05, 0.05)) * h
  r = (0.12 if size == "small" else 0.22) * min(h, w) * rng.uniform(0.9, 1.1)
  image = np.full((h, w, 3), rng.integers(20, 70), np.float32) + rng.normal(0, 6, (h, w, 3))
  image[_mask(shape, h, cx, cy, r, width=w)] = COLORS[color]
  return {
      "key": f"{seed:02d}{index:09d}", "image": np.clip(image, 0, 255).astype(np.uint8),
      "caption": template.format(size=size, color=color, shape=shape, position=position),
      "label": list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape),
  }


def _draw_multi(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
  """(image, segmentation, objects) of one multi-object example; objects in drawing order."""
  n = int(rng.integers(2, 5))
  cells = rng.choice(len(CELLS), n, replace=False)
  colors = rng.choice(len(COLORS), n, replace=False)
  shapes, sizes = rng.integers(len(SHAPES), size=n), rng.integers(len(SIZES), size=n)
  jitter, scale = rng.uniform(-MULTI_JITTER, MULTI_JITTER, (n, 2)), rng.uniform(0.9, 1.1, n)
  background = rng.integers(20, 70)
  image = np.full((s, s, 3), background, np.float32) + rng.normal(0, 6, (s, s, 3))
  segmentation = np.full((s, s), -1, np.int16)
  objects = []
  for i in range(n):
    color, shape, size = list(COLORS)[colors[i]], SHAPES[shapes[i]], SIZES[sizes[i]]
    row, col = divmod(int(cells[i]), 3)
    cx, cy = ((col + 0.5) / 3 + jitter[i, 0]) * s, ((row + 0.5) / 3 + jitter[i, 1]) * s
    mask = _mask(shape, s, cx, cy, MULTI_RADIUS[size] * s * scale[i])
    label = int(colors[i]) * len(SHAPES) + int(shapes[i])
    image[mask], segmentation[mask] = COLORS[color], label
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    objects.append({"text": f"{size} {color} {shape}", "short": f"{color} {shape}", "cell": int(cells[i]),
                    "label": label, "pixels": int(mask.sum()),
                    "box": [float(v) / s for v in (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)]})
  return np.clip(image, 0, 255).astype(np.uint8), segmentation, objects


def multi_caption(objects: list[dict], max_chars: int = MULTI_CAPTION_CHARS) -> str:
  """The caption naming every object (dicts with "text" = "size color shape", "short" = "color shape"
  and "cell"), with the most detail that fits `max_chars`; the last resort always fits 62 for 4 objects
  of distinct colours (at most 6 + 1 + 8 characters each)."""
  levels = (", ".join(f"a {o['text']} {CELLS[o['cell']]}" for o in objects),
            ", ".join(o["text"] for o in objects), ", ".join(o["short"] for o in objects))
  return next((c for c in levels if len(c) <= max_chars), ",".join(o["short"] for o in objects))


def multi_example(index: int, *, seed: int = 0, image_size: int = 64) -> dict:
  """Returns {"key", "image" (uint8 [S, S, 3]), "caption", "label", "regions", "segmentation" (int16
  [S, S]: -1 background, else the object's class colour * len(SHAPES) + shape)} for one index.

  Objects are listed largest first (drawn pixels; ties in grid order) in the caption and in
  `regions` ({"box": tight normalised box of the object's pixels, "text": "small red circle"});
  `label` is the first one's class. Draws from its own stream, so `example` is unchanged."""
  if image_size < MULTI_MIN_SIZE:
    raise ValueError(f"shapes_multi renders at image_size >= {MULTI_MIN_SIZE}, got {image_size}")
  image, segmentation, objects = _draw_multi(np.random.default_rng([seed, index, 1]), image_size)
  objects.sort(key=lambda o: (-o["pixels"], o["cell"]))
  return {
      "key": f"{seed:02d}{index:09d}", "image": image, "caption": multi_caption(objects),
      "label": objects[0]["label"], "regions": [{"box": o["box"], "text": o["text"]} for o in objects],
      "segmentation": segmentation,
  }


class ShapesSource:
  """Random-access source over the shapes set (grain's RandomAccessDataSource protocol)."""

  def __init__(self, split: str = "train", num_examples: int = 100_000, image_size: int = 32):
    if split not in SEED_OF_SPLIT:
      raise ValueError(f"shapes split must be one of {', '.join(SEED_OF_SPLIT)}, got {split!r}")
    self.seed, self.num_examples, self.image_size = SEED_OF_SPLIT[split], num_examples, image_size

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    return example(int(index), seed=self.seed, image_size=self.image_size)

  def __repr__(self) -> str:
    return f"ShapesSource(seed={self.seed}, n={self.num_examples}, size={self.image_size})"



class ShapesMultiSource(ShapesSource):
  """Random access over the multi-object set: `multi_example` records, `segmentation` included (the
  `dense_probe` evaluator reads it; the batcher ignores it and the tar writer does not write it)."""

  def __init__(self, split: str = "train", num_examples: int = 100_000, image_size: int = 64):
    super().__init__(split, num_examples, image_size)
    if image_size < MULTI_MIN_SIZE:
      raise ValueError(f"shapes_multi renders at image_size >= {MULTI_MIN_SIZE}, got {image_size}")

  def __getitem__(self, index: int) -> dict:
    return multi_example(int(index), seed=self.seed, image_size=self.image_size)

  def __repr__(self) -> str:
    return "ShapesMulti" + super().__repr__().removeprefix("Shapes")


class ShapesWideSource(ShapesSource):
  """Random access over the mixed-aspect-ratio set: `wide_example` records (image_size: the side of a
  square of the same area)."""

  def __getitem__(self, index: int) -> dict:
    return wide_example(int(index), seed=self.seed, image_size=self.image_size)

  def __repr__(self) -> str:
    return "ShapesWide" + super().__repr__().removeprefix("Shapes")


KINDS = {"shapes": example, "shapes_multi": multi_example}


def write_tar_shards(out_dir: str, num_shards: int, samples_per_shard: int, *, image_size: int = 32,
                     seed: int = 0, kind: str = "shapes", on_example=lambda: None) -> list[str]:
  """Writes a shapes set (`kind`: shapes or shapes_multi) as img2dataset-style tar shards (KEY.jpg, KEY.txt,
  KEY.json; shapes_multi's .json holds its "regions"); `on_example()` is called after each example."""
  if kind not in KINDS:
    raise ValueError(f"unknown shapes set {kind!r}; valid: {', '.join(KINDS)}")
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for shard in range(num_shards):
    path = os.path.join(out_dir, f"{shard:05d}.tar")
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w") as tar:
      for j in range(samples_per_shard):
        ex = KINDS[kind](shard * samples_per_shard + j, seed=seed, image_size=image_size)
        key = f"{shard:05d}{j:04d}"
        buf = io.BytesIO()
        Image.fromarray(ex["image"]).save(buf, format="JPEG", quality=95)
        meta = {"key": key, "caption": ex["caption"], "label": ex["label"],
                "width": image_size, "height": image_size, "status": "success",
                **({"regions": ex["regions"]} if "regions" in ex else {})}
        for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", ex["caption"].encode()),
                           (f"{key}.json", json.dumps(meta).encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        on_example()
    os.replace(tmp, path)
    paths.append(path)
  return paths
