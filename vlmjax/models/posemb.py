"""Learned position embeddings of another size, resized for `init_from` (CLIPA: pre-train at a low
resolution and a short text, fine-tune at full size from that checkpoint).

Image (a ViT's learned `vision.posemb`, [(1 +) G*G, D], the class-token row first): the G x G grid is
resized bilinearly with the corners aligned, as big_vision's `resample_posemb` does
(`scipy.ndimage.zoom(grid, order=1)`; CLIPA's JAX code uses the same function): output row i of n
samples the stored grid of m at i * (m - 1) / (n - 1), so the corner embeddings are kept exactly, a
constant or linear embedding stays so, and no antialiasing is involved. The class-token row is kept as
it is. (open_clip's `resize_pos_embed` is bicubic with antialiasing and half-pixel centres instead.)
sincos2d embeddings are computed for any grid and need nothing.

Text (a learned 1-D `text.posemb` [L (+1), D], a class-token row last with `pool="cls"`, or the
captioner's `posemb` [L, D]): a shorter context keeps the first rows (the positions a shorter text
reads, unchanged); a longer one is interpolated linearly with half-pixel centres and the ends clamped,
as open_clip's `resize_text_pos_embed` (`F.interpolate(mode="linear", align_corners=False)`) and
CLIPA's `jax.image.resize` do. The class-token row is kept.

`plan` compares a config's parameter shapes with stored ones and says what to resize, or raises a
one-line ConfigError for what cannot be resized; `Resize.apply` does it (NumPy, on the host).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.models import encoders
from vlmjax.models.text import TextTransformer
from vlmjax.models.vision import ViT


def grid_weights(old: int, new: int) -> np.ndarray:
  """[new, old] bilinear weights with the corners aligned (scipy.ndimage.zoom, order 1)."""
  scale = (old - 1) / (new - 1) if new > 1 else 0.0
  x = np.arange(new, dtype=np.float64) * scale
  return _linear_weights(x, old)


def text_weights(old: int, new: int) -> np.ndarray:
  """[new, old] linear weights with half-pixel centres, clamped at the ends (align_corners=False)."""
  x = np.clip((np.arange(new, dtype=np.float64) + 0.5) * old / new - 0.5, 0.0, old - 1)
  return _linear_weights(x, old)


def _linear_weights(x: np.ndarray, old: int) -> np.ndarray:
  lo = np.minimum(np.floor(x).astype(np.int64), max(old - 2, 0))
  frac = x - lo
  w = np.zeros((len(x), old))
  rows = np.arange(len(x))
  np.add.at(w, (rows, lo), 1.0 - frac)
  if old > 1:
    np.add.at(w, (rows, lo + 1), frac)
  return w


def resize_grid(posemb_NxD: np.ndarray, new_grid: int, *, cls: bool) -> np.ndarray:
  """A learned image position embedding [(1 +) G*G, D] resized to [(1 +) new_grid**2, D]."""
  head, body = (posemb_NxD[:1], posemb_NxD[1:]) if cls else (posemb_NxD[:0], posemb_NxD)
  g = math.isqrt(body.shape[0])
  w = grid_weights(g, new_grid)
  grid_GxGxD = np.asarray(body, np.float64).reshape(g, g, -1)
  out = np.einsum("ia,jb,abd->ijd", w, w, grid_GxGxD).reshape(new_grid * new_grid, -1)
  return np.concatenate([head, out.astype(posemb_NxD.dtype)])


def resize_text(posemb_LxD: np.ndarray, new_len: int, *, cls: bool) -> np.ndarray:
  """A learned text position embedding [L (+1), D] to [new_len (+1), D]: truncated when shorter,
  interpolated linearly when longer; a class-token row (last) kept."""
  body, tail = (posemb_LxD[:-1], posemb_LxD[-1:]) if cls else (posemb_LxD, posemb_LxD[:0])
  if new_len <= body.shape[0]:
    out = body[:new_len]
  else:
    out = (text_weights(body.shape[0], new_len) @ np.asarray(body, np.float64)).astype(posemb_LxD.dtype)
  return np.concatenate([out, tail])


@dataclasses.dataclass(frozen=True)
class Layout:
  kind: str          # "grid" (an image) | "text"
  cls_key: str       # the class token's own parameter: a class-token row is there iff this is
  config: str        # the config keys that decide it, for messages


@dataclasses.dataclass(frozen=True)
class Resize:
  key: str
  kind: str
  cls: bool
  old: tuple
  new: tuple

  @property
  def sizes(self) -> tuple[int, int]:
    old, new = self.old[0] - self.cls, self.new[0] - self.cls
    return (math.isqrt(old), math.isqrt(new)) if self.kind == "grid" else (old, new)

  def describe(self) -> str:
    a, b = self.sizes
    if self.kind == "grid":
      return f"resized {self.key} {a}x{a} -> {b}x{b} (bilinear)"
    return f"resized {self.key} {a} -> {b} ({'truncated' if b < a else 'linear'})"

  def apply(self, stored: np.ndarray) -> np.ndarray:
    fn = resize_grid if self.kind == "grid" else resize_text
    return fn(np.asarray(stored), self.sizes[1], cls=self.cls)


def layouts(model_cfg: ml_collections.ConfigDict) -> dict[str, Layout]:
  """The learned position embeddings of a model config that can be resized, by parameter key."""
  out = {}
  if "vision" in model_cfg and encoders.VISION.get(model_cfg.vision.kind) is ViT:
    out["vision.posemb"] = Layout("grid", "vision.cls", "model.vision.posemb, model.vision.cls_token")
  if "text" in model_cfg and encoders.TEXT.get(model_cfg.text.kind) is TextTransformer:
    out["text.posemb"] = Layout("text", "text.cls", "model.text.pool")
  if model_cfg.name == "captioner":
    out["posemb"] = Layout("text", "cls", "model.decoder")
  return out


def plan(model_cfg: ml_collections.ConfigDict, wanted: dict[str, tuple], stored: dict[str, tuple],
         where: str) -> list[Resize]:
  """What to resize to start `model_cfg` (its parameter shapes `wanted`, by dotted key) from `stored`
  (shapes by key); a one-line ConfigError naming the parameter and both shapes for what cannot be."""
  out = []
  for key, layout in layouts(model_cfg).items():
    if key not in wanted and key not in stored:
      continue
    if key not in wanted:
      raise ConfigError(f"{where} has a learned {key} {tuple(stored[key])}; this config learns none, it "
                        f"computes its position embeddings ({layout.config}: use model.vision.posemb='learn')")
    if key not in stored:
      raise ConfigError(f"{where} has no learned {key} (sincos2d, or another model); the config learns one of "
                        f"{tuple(wanted[key])} ({layout.config})")
    r = _resize(key, layout, tuple(wanted[key]), tuple(stored[key]), layout.cls_key in wanted,
                layout.cls_key in stored, where)
    if r.old != r.new:
      out.append(r)
  return out


def _resize(key: str, layout: Layout, new: tuple, old: tuple, cls: bool, stored_cls: bool, where: str) -> Resize:
  shapes = f"{where} parameter {key} is {old}, the config wants {new}"
  if len(old) != 2 or len(new) != 2 or old[1] != new[1]:
    raise ConfigError(f"{shapes}: another width; only the number of positions can be resized")
  if cls != stored_cls:
    has = lambda c: "with a class-token row" if c else "without a class-token row"
    raise ConfigError(f"{shapes}: stored {has(stored_cls)}, wanted {has(cls)} ({layout.config} differ)")
  if layout.kind == "grid" and math.isqrt(old[0] - cls) ** 2 != old[0] - cls:
    raise ConfigError(f"{shapes}: {old[0] - cls} stored positions are not a square grid")
  return Resize(key, layout.kind, cls, old, new)
