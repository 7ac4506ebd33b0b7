"""Builders of small tar shards (good and broken) and pipeline configs for the data tests."""

import io
import tarfile

import jax
import numpy as np
from PIL import Image

from vlmjax import config


def jpeg(value: int, size: int = 16) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value % 256, np.uint8)).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return str(path)


def sample(key: str, caption: str, value: int = 100) -> list[tuple[str, bytes]]:
  return [(f"{key}.jpg", jpeg(value)), (f"{key}.txt", caption.encode()), (f"{key}.json", b"{}")]


def write_shards(directory, num_shards: int, per_shard: int, prefix: str = "s") -> list[str]:
  """Shards NNNNN.tar whose captions name the sample uniquely: '{prefix} {shard} {index}'."""
  directory.mkdir(parents=True, exist_ok=True)
  return [write_tar(directory / f"{s:05d}.tar",
                    [m for j in range(per_shard) for m in sample(f"{s:05d}{j:04d}", f"{prefix} {s} {j}", s * 16 + j)])
          for s in range(num_shards)]


def data_cfg(source, **overrides):
  cfg = config.base(batch_size=8, total_steps=10).data.train
  cfg.source = source
  cfg.num_threads, cfg.prefetch, cfg.shuffle_buffer = 2, 2, 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def single_device():
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def captions(batch) -> list[str]:
  from vlmjax.data import tokenizers
  tok = tokenizers.ByteTokenizer()
  return [tok.decode(row) for row in np.asarray(jax.device_get(batch["text"]))]
