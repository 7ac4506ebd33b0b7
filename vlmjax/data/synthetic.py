"""The procedural "shapes" set: coloured shapes on a dark background, with captions.

Every example is a pure function of (seed, index), so the set needs no download,
any split is reproducible, and a random-access source over it is free. Classes
for zero-shot evaluation are colour x shape.
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


def _mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
  y, x = np.mgrid[:size, :size].astype(np.float32) + 0.5
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


def write_tar_shards(out_dir: str, num_shards: int, samples_per_shard: int, *,
                     image_size: int = 32, seed: int = 0, on_example=lambda: None) -> list[str]:
  """Writes the shapes set as img2dataset-style tar shards (KEY.jpg, KEY.txt, KEY.json);
  `on_example()` is called after each example (progress)."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for shard in range(num_shards):
    path = os.path.join(out_dir, f"{shard:05d}.tar")
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w") as tar:
      for j in range(samples_per_shard):
        ex = example(shard * samples_per_shard + j, seed=seed, image_size=image_size)
        key = f"{shard:05d}{j:04d}"
        buf = io.BytesIO()
        Image.fromarray(ex["image"]).save(buf, format="JPEG", quality=95)
        meta = {"key": key, "caption": ex["caption"], "label": ex["label"],
                "width": image_size, "height": image_size, "status": "success"}
        for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", ex["caption"].encode()),
                           (f"{key}.json", json.dumps(meta).encode())):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
        on_example()
    os.replace(tmp, path)
    paths.append(path)
  return paths
