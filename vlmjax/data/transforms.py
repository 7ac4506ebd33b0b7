"""Per-example transforms: decode at reduced size, resize or random-resized-crop, normalise.

Decoding uses OpenCV's reduced JPEG decode (`IMREAD_REDUCED_COLOR_{2,4,8}`: the
DCT is scaled, so a 512 px JPEG needed at 224 costs about a quarter of a full
decode), choosing the largest reduction that keeps the crop at least the target
size; anything OpenCV cannot read falls back to PIL. Measured on this repo's
2-core dev machine, 512 px JPEG -> 224, one thread: PIL full decode 157 img/s,
PIL draft 382, OpenCV full 531, OpenCV reduced 622 (the issue's 16-core figures
rank them the same way). `ImageDecoder.decode` also returns the crop it took, in pixels of
the original image whatever the reduction, so regions (`regions.crop`) follow the image.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

from vlmjax.errors import ConfigError

cv2.setNumThreads(1)  # parallelism comes from the pipeline's decode threads

# CLIP's normalisation constants (RGB), used by open_clip and most CLIP-family checkpoints.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255
MODES = ("resize", "center_crop", "random_resized_crop")
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


class BadImage(ValueError):
  """Image bytes that do not decode (corrupt, truncated or of an unknown format)."""


def crop_box(width: int, height: int, mode: str, rng: np.random.Generator | None,
             min_scale: float = 0.08, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(x0, y0, w, h) of the region to keep: all of it, the centred square, or an Inception-style random crop."""
  if mode == "resize":
    return 0, 0, width, height
  if mode == "center_crop":
    s = min(width, height)
    return (width - s) // 2, (height - s) // 2, s, s
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(min_scale, 1.0)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  s = min(width, height)  # fall back to the centre square
  return (width - s) // 2, (height - s) // 2, s, s


# EXIF orientation -> the stored pixels (rows, columns) as displayed, as views (PIL's ImageOps.exif_transpose).
_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1]}


def _orientation(im: Image.Image) -> int:
  try:
    orientation = im.getexif().get(0x0112, 1)
  except Exception:  # noqa: BLE001 -- a corrupt EXIF block: show the pixels as stored
    return 1
  return orientation if orientation in _ORIENT else 1


def _jpeg_complete(data: bytes) -> bool:
  """Whether a JPEG has its end-of-image marker after the start of its scan (bytes after it are allowed)."""
  i = 2
  while i + 4 <= len(data) and data[i] == 0xFF:
    marker = data[i + 1]
    if marker == 0xDA:  # start of scan: in entropy-coded data 0xFF is always followed by 0x00 or a restart marker
      return data.rfind(b"\xff\xd9", i) >= 0  # from the end: the marker is there, maybe before trailing bytes
    if marker == 0xFF:  # fill byte
      i += 1
    elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
      i += 2
    else:
      i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
  return False


def _decode_bytes(data: bytes, box_fn) -> tuple[np.ndarray, bool]:
  """Bytes -> (the cropped region as a uint8 array, whether it is BGR), decoded at the largest reduction
  that keeps the region at least the target size. The EXIF orientation is applied (as viewers and
  img2dataset do) and the box is chosen in the oriented image."""
  try:
    with Image.open(io.BytesIO(data)) as im:  # reads the header only
      width, height, fmt = *im.size, im.format
      orientation = _orientation(im)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise BadImage(f"not an image ({type(e).__name__})") from None
  if fmt == "JPEG" and not _jpeg_complete(data):
    raise BadImage("truncated JPEG (no end-of-image marker)")
  if orientation >= 5:  # a quarter turn: displayed width and height swap
    width, height = height, width
  x0, y0, w, h, size = box_fn(width, height)
  k = 1
  if fmt == "JPEG":
    while k < 8 and w // (2 * k) >= size and h // (2 * k) >= size:
      k *= 2
  pixels, bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[k] | cv2.IMREAD_IGNORE_ORIENTATION), True
  if pixels is None:  # a format OpenCV does not read: PIL, full size
    try:
      with Image.open(io.BytesIO(data)) as im:
        pixels, bgr = np.asarray(im.convert("RGB")), False
    except (OSError, ValueError, SyntaxError) as e:
      raise BadImage(f"undecodable image ({type(e).__name__})") from None
  if orientation != 1:
    pixels = _ORIENT[orientation](pixels)
  sy, sx = pixels.shape[0] / height, pixels.shape[1] / width
  top, left = int(y0 * sy), int(x0 * sx)
  region = pixels[top:top + max(1, round(h * sy)), left:left + max(1, round(w * sx))]
  return (np.ascontiguousarray(region) if orientation != 1 else region), bgr


def _resize(region: np.ndarray, size: int, width: int | None = None) -> np.ndarray:
  """To [size, width (default: size)]: area averaging when shrinking by 2x or more, bilinear when close to
  the size, bicubic when growing (either side)."""
  h, w = region.shape[:2]
  width = width or size
  if (h, w) == (size, width):
    return region.copy()
  if h >= 2 * size and w >= 2 * width:
    interp = cv2.INTER_AREA
  else:
    interp = cv2.INTER_LINEAR if h >= size and w >= width else cv2.INTER_CUBIC
  return cv2.resize(region, (width, size), interpolation=interp)


class ImageDecoder:
  """Encoded bytes or uint8 [H, W, 3] -> uint8 [size, size, 3] RGB; raises BadImage."""

  def __init__(self, size: int, mode: str = "resize", min_scale: float = 0.08):
    if mode not in MODES:
      raise ValueError(f"image mode {mode!r} is unknown; valid: {', '.join(MODES)}")
    self.size, self.mode, self.min_scale = size, mode, min_scale

  def __call__(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
    return self.decode(image, rng)[0]

  def decode(self, image, rng: np.random.Generator | None = None
             ) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """(uint8 [size, size, 3] RGB, the crop (x0, y0, w, h) taken, the image's (width, height)), the crop
    in pixels of the original image as displayed (after the EXIF orientation) even when the bytes were
    decoded at a reduced size: what `regions.crop` maps normalised boxes with."""
    taken = []

    def box(w: int, h: int) -> tuple[int, int, int, int, int]:
      taken.append((crop_box(w, h, self.mode, rng, self.min_scale), (w, h)))
      return (*taken[-1][0], self.size)

    if isinstance(image, (bytes, bytearray, memoryview)):
      region, bgr = _decode_bytes(bytes(image), box)
      out = _resize(region, self.size)
      return (cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if bgr else out), *taken[-1]
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise BadImage(f"image array must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    x0, y0, w, h, _ = box(image.shape[1], image.shape[0])
    return _resize(np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w]), self.size), *taken[-1]


def decode_whole(image, size_fn) -> np.ndarray:
  """Encoded bytes or uint8 [H, W, 3] -> the whole image (no crop; EXIF orientation applied) as uint8
  [h, w, 3] RGB, where (h, w) = size_fn(width, height) of the image as displayed (NaFlex's aspect-preserving
  grids, `vlmjax.data.naflex`); a JPEG is decoded at the largest reduction keeping both sides >= max(h, w).
  Raises BadImage, or what `size_fn` raises."""
  sizes = []

  def box(width: int, height: int) -> tuple[int, int, int, int, int]:
    sizes.append(size_fn(width, height))
    return 0, 0, width, height, max(sizes[-1])

  if isinstance(image, (bytes, bytearray, memoryview)):
    region, bgr = _decode_bytes(bytes(image), box)
    out = _resize(region, *sizes[-1])
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB) if bgr else out
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise BadImage(f"image array must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  box(image.shape[1], image.shape[0])
  return _resize(np.ascontiguousarray(image), *sizes[-1])


# `data.train.normalize`: the (mean, std) per channel, in 0..255, that pixels are normalised with. CLIP's
# (OpenAI CLIP, open_clip, CoCa); SigLIP's and SigLIP 2's (x / 127.5 - 1: big_vision's value_range(-1, 1),
# transformers' SiglipImageProcessor mean = std = 0.5); ImageNet's (torchvision).
NORMALIZE = {"clip": (MEAN, STD),
             "siglip": (np.full(3, 127.5, np.float32), np.full(3, 127.5, np.float32)),
             "imagenet": (np.array([0.485, 0.456, 0.406], np.float32) * 255, np.array([0.229, 0.224, 0.225], np.float32) * 255)}


def check_normalize(name: str, where: str = "data.train.normalize") -> None:
  if name not in NORMALIZE:
    raise ConfigError(f"{where}={name!r} is unknown; valid: {', '.join(NORMALIZE)} (the mean and std the model's "
                      "weights expect: clip for CLIP/open_clip/CoCa, siglip for SigLIP and SigLIP 2)")


def mean_std(name: str = "clip") -> tuple[list[float], list[float]]:
  """(mean, std) of `NORMALIZE[name]` in 0..1, as image processors write them."""
  mean, std = NORMALIZE[name]
  return [float(x) for x in mean / 255], [float(x) for x in std / 255]


def normalize(image_uint8: np.ndarray, how: str = "clip") -> np.ndarray:
  """uint8 [..., 3] -> float32 with the mean and std `NORMALIZE[how]` (CLIP's by default)."""
  mean, std = NORMALIZE[how]
  return (image_uint8.astype(np.float32) - mean) * (1.0 / std)


_LUTS = {name: ((np.arange(256, dtype=np.float32)[:, None] - mean) / std).astype(np.float32).reshape(1, 256, 3)
         for name, (mean, std) in NORMALIZE.items()}


def normalize_into(image_uint8: np.ndarray, out: np.ndarray, how: str = "clip") -> None:
  """`normalize` of one uint8 [H, W, 3] image written into float32 `out` (a table look-up, twice as fast)."""
  cv2.LUT(image_uint8, _LUTS[how], dst=out)


def original_size(image) -> tuple[int, int]:
  """(width, height) of encoded bytes (header only) or of a uint8 array; raises BadImage."""
  if not isinstance(image, (bytes, bytearray, memoryview)):
    return np.asarray(image).shape[1], np.asarray(image).shape[0]
  try:
    with Image.open(io.BytesIO(image)) as im:
      im.load()
      return im.size
  except (OSError, ValueError, SyntaxError) as e:
    raise BadImage(f"{type(e).__name__}: {str(e)[:60]}") from None


def encode_png(image_uint8: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image_uint8).save(buf, format="PNG")
  return buf.getvalue()
