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


class ShardServer:
  """Serves in-memory files on 127.0.0.1 (a free port) with http Range support, for one test.

  `requests` logs (path, first byte asked for). `cut[path] = n` makes the next n responses of that path stop
  at the middle of the file (then close the connection); `chunk_delay` trickles bodies in 4 KiB chunks.
  """

  def __init__(self, files: dict[str, bytes], *, ranges: bool = True, chunk_delay: float = 0.0):
    import http.server
    import threading
    import time
    self.files, self.requests, self.cut = files, [], {}
    owner = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):
        data = owner.files.get(self.path)
        if data is None:
          self.send_error(404)
          return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if ranges and self.headers["Range"] else 0
        owner.requests.append((self.path, start))
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
          self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if owner.cut.get(self.path, 0) > 0:  # stop at the middle of the file
          owner.cut[self.path] -= 1
          body = body[:max(0, len(data) // 2 - start)]
        for i in range(0, len(body), 4096):
          self.wfile.write(body[i:i + 4096])
          self.wfile.flush()
          time.sleep(chunk_delay)
        self.close_connection = True

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()
    self.thread.join()


def open_fds(substring: str) -> list[str]:
  """Paths of this process's open file descriptors that contain `substring`."""
  import os
  out = []
  for fd in os.listdir("/proc/self/fd"):
    try:
      out.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
      pass
  return sorted(p for p in out if substring in p)
