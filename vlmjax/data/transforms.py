"""Per-example transforms: decode, resize, normalise, tokenise."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# CLIP's normalisation constants (RGB), used by open_clip and most CLIP-family checkpoints.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255


def decode_image(image, size: int) -> np.ndarray:
  """Encoded bytes or a uint8 array -> uint8 [size, size, 3] RGB (bicubic resize when needed)."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    with Image.open(io.BytesIO(image)) as im:
      im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
      pil = im.convert("RGB")
  else:
    pil = None if image.shape[:2] == (size, size) else Image.fromarray(image)
    if pil is None:
      return image
  if pil.size != (size, size):
    pil = pil.resize((size, size), Image.BICUBIC)
  return np.asarray(pil)


def normalize(image_uint8: np.ndarray) -> np.ndarray:
  return (image_uint8.astype(np.float32) - MEAN) / STD


class ImageText:
  """Maps a source example {"image", "caption", ...} to {"image": f32 [S, S, 3], "text": i32 [L]}."""

  def __init__(self, image_size: int, context_length: int, tokenizer):
    self.image_size, self.context_length, self.tokenizer = image_size, context_length, tokenizer

  def __call__(self, ex: dict) -> dict:
    image = normalize(decode_image(ex["image"], self.image_size))
    return {"image": image, "text": self.tokenizer.encode(ex["caption"], self.context_length)}
