"""Input pipeline throughput: examples per second per CPU core, vlmjax vs webdataset + PIL.

    python scripts/bench_data.py [--shards 4] [--per-shard 128] [--batch 64] [--threads 2] [--passes 2]

Writes tar shards of 512 px JPEGs (smooth random images, ~quality 90) to a
temporary directory, then runs, one after the other on the same shards:

  bare decode      PIL full decode of every JPEG, nothing else (one thread)
  webdataset+PIL   webdataset's tar reader, PIL decode, random-resized-crop to
                   224 with PIL, normalise, byte tokenise, batch (one process)
  vlmjax           `vlmjax.data.pipeline.host_batches` on tar:SHARDS with
                   image_mode=random_resized_crop, 224 px, same tokeniser and batch:
                   numpy batches, the same output as the baseline
  vlmjax+device    `pipeline.build`: the same plus the copy into a global jax.Array

"per core" is examples divided by the CPU seconds the process used (user +
system), so multi-threaded and single-threaded runs compare fairly on a shared
machine. Needs the `bench` extra (webdataset).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vlmjax.data import tokenizers, transforms  # noqa: E402

SIZE, CONTEXT, MIN_SCALE = 224, 64, 0.9


def cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def write_shards(directory: str, shards: int, per_shard: int, seed: int = 0) -> list[str]:
  import tarfile
  rng = np.random.default_rng(seed)
  paths = []
  for s in range(shards):
    path = os.path.join(directory, f"{s:05d}.tar")
    with tarfile.open(path, "w") as tar:
      for j in range(per_shard):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((512, 512), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        caption = f"a photo number {s * per_shard + j} of smooth random colours".encode()
        for name, data in ((f"{s:05d}{j:04d}.jpg", buf.getvalue()), (f"{s:05d}{j:04d}.txt", caption)):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    paths.append(path)
  return paths


def measure(name: str, run, n_expected: int) -> dict:
  wall, cpu = time.perf_counter(), cpu_seconds()
  n = run()
  wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
  assert n >= n_expected * 0.99, (name, n, n_expected)
  out = {"name": name, "examples": n, "wall_s": wall, "cpu_s": cpu, "per_s": n / wall, "per_core_s": n / cpu}
  print(f"{name:<16} {n:>6} examples  {wall:6.2f} s wall  {cpu:6.2f} s CPU  "
        f"{out['per_s']:8.1f} ex/s  {out['per_core_s']:8.1f} ex/s per core", flush=True)
  return out


def bare_decode(paths: list[str], passes: int) -> int:
  import tarfile
  blobs = []
  for p in paths:
    with tarfile.open(p) as tar:
      blobs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
  n = 0
  for _ in range(passes):
    for b in blobs:
      with Image.open(io.BytesIO(b)) as im:
        im.convert("RGB").load()
      n += 1
  return n


def webdataset_baseline(paths: list[str], passes: int, batch: int) -> int:
  import webdataset as wds
  tok = tokenizers.ByteTokenizer()
  rng = np.random.default_rng(0)

  def transform(sample):
    image, caption = sample
    x0, y0, w, h = transforms.crop_box(*image.size, "random_resized_crop", rng, MIN_SCALE)
    image = image.crop((x0, y0, x0 + w, y0 + h)).resize((SIZE, SIZE), Image.BILINEAR)
    return transforms.normalize(np.asarray(image)), tok.encode(caption, CONTEXT)

  ds = (wds.WebDataset(paths * passes, shardshuffle=False).shuffle(1000).decode("pil")
        .to_tuple("jpg", "txt").map(transform).batched(batch, partial=False))
  return sum(len(b[0]) for b in ds)


def vlmjax_pipeline(paths: list[str], n: int, batch: int, threads: int, device: bool) -> int:
  """The train pipeline; device=False stops at host numpy batches (the baseline's output)."""
  import grain
  import jax
  from vlmjax import config
  from vlmjax.data import pipeline
  cfg = config.base(batch_size=batch, total_steps=1).data.train
  cfg.source = f"tar:{os.path.dirname(paths[0])}/*.tar"
  cfg.image_mode, cfg.crop_min_scale, cfg.num_threads, cfg.shuffle_buffer = "random_resized_crop", MIN_SCALE, threads, 1000
  kw = dict(seed=0, image_size=SIZE, context_length=CONTEXT, vocab_size=259)
  if device:
    it = pipeline.build(cfg, global_batch=batch, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]), **kw)
  else:
    ds = pipeline.host_batches(cfg, batch_size=batch, index=0, count=1, **kw)
    it = iter(grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.prefetch))
  got = 0
  for _ in range(n // batch):
    got += next(it)["image"].shape[0]
  it.close()
  return got


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shards", type=int, default=4)
  p.add_argument("--per-shard", type=int, default=128)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--passes", type=int, default=2)
  args = p.parse_args()
  import jax
  jax.devices()  # start the backend outside the timed region
  with tempfile.TemporaryDirectory() as tmp:
    paths = write_shards(tmp, args.shards, args.per_shard)
    n = args.shards * args.per_shard * args.passes
    print(f"{len(paths)} shards x {args.per_shard} JPEGs of 512 px, {args.passes} passes, batch {args.batch}, "
          f"{os.cpu_count()} CPUs visible")
    bare = measure("bare decode", lambda: bare_decode(paths, args.passes), n)
    base = measure("webdataset+PIL", lambda: webdataset_baseline(paths, args.passes, args.batch), n - args.batch)
    ours = measure("vlmjax", lambda: vlmjax_pipeline(paths, n, args.batch, args.threads, False), n - args.batch)
    dev = measure("vlmjax+device", lambda: vlmjax_pipeline(paths, n, args.batch, args.threads, True), n - args.batch)
  print(f"vlmjax / webdataset+PIL per core: {ours['per_core_s'] / base['per_core_s']:.2f}x host batches, "
        f"{dev['per_core_s'] / base['per_core_s']:.2f}x including the copy to the (CPU) device; "
        f"bare PIL decode: {bare['per_core_s']:.1f} ex/s per core")
  return 0


if __name__ == "__main__":
  sys.exit(main())
