"""Evaluation data: the first `num_examples` records of a source, in fixed-size global batches.

`Context` is what evaluators know of the run, built once per suite (`context`): image size,
context length, tokenizer, batch sharding, model class. Records come from
`data.sources.open_source(mode="random")` ({"key", "image", "caption"}, plus
"label" for classification sets and optionally "captions", a list, for sets with
several references per image). Every batch has the evaluator's `batch_size`
(the last one padded), so each model function compiles once; each process
reads only the rows its devices hold.

Shape legend: B batch, S image size, L context length, E embedding dim.
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent import futures
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from vlmjax import models, progress, sharding
from vlmjax.errors import ConfigError, DataError
from vlmjax.data import naflex, sources, tokenizers, transforms


NEEDS_CAPTIONS = "retrieval and captioning need an image-text set"
NEEDS_LABELS = "zero-shot classification needs a labelled set"


@dataclasses.dataclass(frozen=True)
class Context:
  """What an evaluator may know of the run it evaluates (never the root config)."""
  mesh: jax.sharding.Mesh
  sharding: jax.sharding.NamedSharding   # of a batch: the leading axis over the batch mesh axes
  image_size: int
  context_length: int
  vocab_size: int
  tokenizer: Any
  model_name: str
  model_class: type
  box_bins: int = 100                    # LocCa's box quantisation (`data.train.locca.box_bins`)
  max_patches: int = 0                   # NaFlex: the patch budget of an image (`data.train.max_patches`; 0: square)
  patch_size: int = 0                    # NaFlex: the patch side (`model.vision.patch_size`)
  normalize: str = "clip"                # the pixels' mean and std, as training's (`data.train.normalize`)


def context(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Context:
  return Context(mesh=mesh, sharding=sharding.batch_sharding(mesh, cfg.mesh.rules), image_size=cfg.model.image_size,
                 context_length=cfg.model.text.context_length, vocab_size=cfg.model.text.vocab_size,
                 tokenizer=tokenizers.build(cfg.data.train.tokenizer), model_name=cfg.model.name,
                 model_class=models.REGISTRY.lookup(cfg.model.name), box_bins=cfg.data.train.locca.box_bins,
                 max_patches=cfg.data.train.max_patches, patch_size=cfg.model.vision.patch_size,
                 normalize=cfg.data.train.normalize)


class EvalSet:
  """The examples one evaluator reads, and the mesh it reads them onto."""

  def __init__(self, name: str, ev: ml_collections.ConfigDict, ctx: Context):
    self.name, self.mesh = name, ctx.mesh
    self.model_name, self.model_class = ctx.model_name, ctx.model_class
    self.image_size = ctx.image_size
    self.context_length = ctx.context_length
    self.tokenizer = ctx.tokenizer
    self.sharding = ctx.sharding
    self.batch_size = ev.batch_size
    self.decoder = transforms.ImageDecoder(self.image_size, ev.image_mode)
    # NaFlex runs read every image whole at its aspect ratio within a patch budget (the evaluator's, else the
    # run's), as they train
    budget = ev.get("max_patches", 0) or ctx.max_patches
    if budget and not ctx.max_patches:
      raise ConfigError(f"evals.{name}.max_patches={budget} is read by NaFlex runs only (data.train.max_patches > 0); "
                        "set it to 0")
    self.naflex = naflex.Decoder(ctx.patch_size, budget, ctx.normalize) if budget else None
    self.normalize = ctx.normalize
    shards = num_shards(self.sharding)
    if self.batch_size % shards:
      raise ConfigError(f"evals.{name}.batch_size={self.batch_size} is not divisible by the {shards} "
                        f"batch shards of the mesh")
    try:
      self.source = sources.open_source(ev.data.source, mode="random", image_size=self.image_size,
                                        data_dir=ev.data.data_dir or None)
    except DataError as e:
      raise DataError(f"evals.{name}.data.source: {e}") from None
    if ev.num_examples > len(self.source):
      raise ConfigError(f"evals.{name}.num_examples={ev.num_examples} exceeds the {len(self.source)} "
                        f"examples of {ev.data.source!r}; use 0 for all of them")
    self.num_examples = ev.num_examples or len(self.source)
    self._meta: list[dict] | None = None

  def restrict(self, indices: np.ndarray) -> None:
    """From now on the set is the records `indices` of its source, in that order (few-shot: only the
    drawn examples are embedded)."""
    self.source, self.num_examples, self._meta = _Rows(self.source, indices), len(indices), None

  def require_field(self, field: str, needed_by: str) -> None:
    """A one-line ConfigError unless the first record has `field` ("caption" also accepts "captions")."""
    rec = self.source[0] if self.num_examples else {}
    has = rec.get(field) is not None or (field == "caption" and rec.get("captions") is not None)
    if not has:
      raise ConfigError(f"evals.{self.name}: records of {self.source!r} carry no {field!r} field; {needed_by}")

  def meta(self) -> list[dict]:
    """Every record without its image (captions, labels), read once; the same on all processes."""
    if self._meta is None:
      self._meta = [{k: v for k, v in self.source[i].items() if k != "image" and not k.startswith("_")}
                    for i in range(self.num_examples)]
    return self._meta

  def captions(self) -> list[list[str]]:
    out = [list(m["captions"]) if "captions" in m else [m["caption"]] for m in self.meta()]
    if any(c is None for caps in out for c in caps):
      raise ConfigError(f"evals.{self.name}: records of {self.source!r} carry no caption; {NEEDS_CAPTIONS}")
    empty = next((i for i, caps in enumerate(out) if not caps), None)
    if empty is not None:
      raise ConfigError(f"evals.{self.name}: record {empty} of {self.source!r} has an empty caption list; "
                        f"every image needs at least one caption")
    return out

  def labels(self) -> np.ndarray:
    meta = self.meta()
    if meta and "label" not in meta[0]:
      raise ConfigError(f"evals.{self.name}: records of {self.source!r} carry no 'label' field; {NEEDS_LABELS}")
    return np.asarray([m["label"] for m in meta], np.int32)

  def image_batches(self):
    """Yields (global image array [B, S, S, 3], number of real rows) over the examples; in a NaFlex run
    the image is the dict of global arrays {"patches", "shapes", "mask", "positions"} (`vlmjax.data.naflex`)."""
    pool = futures.ThreadPoolExecutor(4)
    for start in range(0, self.num_examples, self.batch_size):
      n = min(self.batch_size, self.num_examples - start)

      def rows(lo: int, hi: int, start=start, n=n):
        idx = [start + min(i, n - 1) for i in range(lo, hi)]  # padding repeats the last real row
        if self.naflex is None:
          return np.stack(list(pool.map(self._image, idx)))
        one = list(pool.map(self._naflex_image, idx))
        return {k: np.stack([r[k] for r in one]) for k in naflex.KEYS}
      if self.naflex is None:
        yield self.global_batch((self.batch_size, self.image_size, self.image_size, 3), rows), n
      else:
        yield self.global_dict({k: v.shape for k, v in self.naflex.empty_images(self.batch_size).items()}, rows), n
    pool.shutdown()

  def _record(self, index: int) -> dict:
    rec = self.source[index]
    if "image" not in rec:
      raise DataError(f"evals.{self.name}: record {index} ({rec['key']}) of {self.source!r} is unreadable")
    return rec

  def _image(self, index: int) -> np.ndarray:
    return transforms.normalize(self.decoder(self._record(index)["image"]), self.normalize)

  def _naflex_image(self, index: int) -> dict[str, np.ndarray]:
    rec, out = self._record(index), self.naflex.empty_images(1)
    try:
      image, grid = self.naflex(rec["image"])
    except transforms.BadImage as e:
      raise DataError(f"evals.{self.name}: record {index} ({rec['key']}) of {self.source!r}: {e}") from None
    self.naflex.write(image, grid, out, 0)
    return {k: v[0] for k, v in out.items()}

  def tokenize(self, texts: list[str]) -> np.ndarray:
    """int32 [len(texts), L] token ids, once per evaluator (prompts and captions do not change)."""
    return np.stack([self.tokenizer.encode(t, self.context_length) for t in texts]).astype(np.int32)

  def text_batches(self, tokens_TxL: np.ndarray):
    """Yields (global token array [B, L], number of real rows) over the rows of `tokens_TxL`."""
    for start in range(0, len(tokens_TxL), self.batch_size):
      n = min(self.batch_size, len(tokens_TxL) - start)
      chunk = tokens_TxL[start:start + n]
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
      yield self.global_batch(chunk.shape, lambda lo, hi, c=chunk: c[lo:hi]), n

  def _span(self, shape: tuple[int, ...]) -> tuple[int, int]:
    """This process's contiguous row range of a global batch of `shape`."""
    index_map = self.sharding.addressable_devices_indices_map(shape)
    spans = [idx[0].indices(shape[0])[:2] for idx in index_map.values()]
    return min(s[0] for s in spans), max(s[1] for s in spans)

  def global_batch(self, shape: tuple[int, ...], rows) -> jax.Array:
    """A global array from `rows(lo, hi)`, called once for this process's contiguous row range."""
    lo, _ = span = self._span(shape)
    local = rows(*span)
    return jax.make_array_from_callback(shape, self.sharding,
                                        lambda idx: local[(_shift(idx[0], lo, shape[0]), *idx[1:])])

  def global_dict(self, shapes: dict[str, tuple[int, ...]], rows) -> dict[str, jax.Array]:
    """Global arrays of `shapes` (one batch axis) from `rows(lo, hi)` -> {key: local rows}, called once."""
    first = next(iter(shapes.values()))
    lo, _ = span = self._span(first)
    local = rows(*span)
    return {k: jax.make_array_from_callback(shape, self.sharding, lambda idx, k=k, shape=shape: local[k][
        (_shift(idx[0], lo, shape[0]), *idx[1:])]) for k, shape in shapes.items()}


def _shift(s: slice, lo: int, size: int) -> slice:
  start, stop, _ = s.indices(size)
  return slice(start - lo, stop - lo)


def num_shards(batch_sharding: jax.sharding.NamedSharding) -> int:
  spec = batch_sharding.spec[0] if batch_sharding.spec else None
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return int(np.prod([batch_sharding.mesh.shape[a] for a in axes]))


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def apply_model(params, x, *, graphdef: nnx.GraphDef, method: str):
  return getattr(nnx.merge(graphdef, params), method)(x)


def gather(x: jax.Array, n: int) -> np.ndarray:
  """The first `n` rows of a global array, on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))[:n]


def counter(ds: EvalSet, what: str, total: int, unit: str) -> progress.Counter:
  """Progress of one pass over an eval set, on stderr (`vlmjax caption` prints data on stdout); a line
  only for a pass that lasts more than a few seconds."""
  return progress.stderr_counter(f"evals.{ds.name}: {what}", total=total, unit=unit,
                                 primary=jax.process_index() == 0)


class _Rows:
  """The records `indices` of a random-access source."""

  def __init__(self, source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[i])]

  def __repr__(self) -> str:
    return f"{self.source!r}[{len(self.indices)} rows]"


def embed_images(ds: EvalSet, graphdef: nnx.GraphDef, params, method: str = "encode_image",
                 what: str = "images") -> np.ndarray:
  """The model's `method` of every image [num_examples, ...] (float32, host): `encode_image` gives
  L2-normalised embeddings [num_examples, E]."""
  require(ds, method)
  bar, out = counter(ds, f"embedding {what}", ds.num_examples, "images"), []
  for x, n in ds.image_batches():
    out.append(gather(apply_model(params, x, graphdef=graphdef, method=method), n))
    bar.update(n)
  bar.close()
  return np.concatenate(out).astype(np.float32)


def embed_texts(ds: EvalSet, graphdef: nnx.GraphDef, params, tokens_TxL: np.ndarray) -> np.ndarray:
  """L2-normalised text embeddings [T, E] (float32, host) of `ds.tokenize`d texts."""
  require(ds, "encode_text")
  bar, out = counter(ds, "embedding texts", len(tokens_TxL), "texts"), []
  for t, n in ds.text_batches(tokens_TxL):
    out.append(gather(apply_model(params, t, graphdef=graphdef, method="encode_text"), n))
    bar.update(n)
  bar.close()
  return np.concatenate(out).astype(np.float32)


def require(ds: EvalSet, method: str) -> None:
  if not hasattr(ds.model_class, method):
    raise ConfigError(f"evals.{ds.name} needs a model with {method}(); "
                      f"model.name={ds.model_name!r} ({ds.model_class.__name__}) has none")
