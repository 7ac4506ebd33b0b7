"""Image-text retrieval: recall@k both ways, with several captions per image.

Image->text: a query image hits at k if any of its captions is among the top k
texts; given the caption strings, a text equal to one of them counts as one of
them (a set where two images share a caption string embeds it identically, and
would otherwise lose both). Text->image: a query caption hits at k if its image
is among the top k images. Ties are pessimistic (see `ranking`): wrong candidates
scoring equal to the best correct one count as ranked ahead of it.

Shape legend: I images, T texts (captions), E embedding dim, B batch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

import ml_collections
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.evals import common

if TYPE_CHECKING:
  import jax


def recall_at_k(image_emb, text_emb, text_image_ids, ks: Sequence[int] = (1, 5, 10), *,
                texts: Sequence[str] | None = None, mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """{"i2t_rK", "t2i_rK"} (recall at K) as fractions in [0, 1] for L2-normalised embeddings.

  image_emb [I, E], text_emb [T, E], text_image_ids [T]: the image index (0..I-1) of each
  caption; every image needs at least one caption. `texts` [T]: the caption strings, so that
  image->text takes a text equal to one of the image's captions as correct.
  """
  from vlmjax.evals import ranking  # noqa: PLC0415 (configs import this module; keep it free of jax)
  image_IxE, text_TxE = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
  ids_T = np.asarray(text_image_ids)
  num_images = len(image_IxE)
  if ids_T.shape != (len(text_TxE),):
    raise ValueError(f"text_image_ids has shape {ids_T.shape}, expected ({len(text_TxE)},), one per text")
  if len(ids_T) and (ids_T.min() < 0 or ids_T.max() >= num_images):
    raise ValueError(f"text_image_ids must lie in [0, {num_images}), got [{ids_T.min()}, {ids_T.max()}]")
  missing = np.setdiff1d(np.arange(num_images), ids_T)
  if len(missing):
    raise ValueError(f"{len(missing)} image(s) have no caption, e.g. image {missing[0]}")
  if any(k < 1 for k in ks):
    raise ValueError(f"recall ks must be >= 1, got {tuple(ks)}")
  image_ids_I = np.arange(num_images)
  if texts is None:
    i2t = ranking.ranks(image_IxE, image_ids_I, text_TxE, ids_T, mesh=mesh)
  else:  # a text's id is its string's; an image is correct for the ids of its captions
    if len(texts) != len(ids_T):
      raise ValueError(f"got {len(texts)} texts for {len(ids_T)} text embeddings")
    string_id = {}
    text_sid_T = np.asarray([string_id.setdefault(t, len(string_id)) for t in texts], np.int32)
    per_image = [sorted(set(text_sid_T[ids_T == i].tolist())) for i in range(num_images)]
    sids_IxM = np.full((num_images, max(map(len, per_image))), -1, np.int32)
    for i, sids in enumerate(per_image):
      sids_IxM[i, :len(sids)] = sids
    i2t = ranking.ranks(image_IxE, sids_IxM, text_TxE, text_sid_T, mesh=mesh)
  t2i = ranking.ranks(text_TxE, ids_T, image_IxE, image_ids_I, mesh=mesh)
  out = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}  # no '@': TensorBoard would rename it
  out.update({f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks})
  return out


def config(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", ks: tuple[int, ...] = (1, 5, 10)) -> ml_collections.ConfigDict:
  c = common.fields("retrieval", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode)
  c.ks = tuple(ks)
  return c


def check(where: str, ev) -> None:
  ks = ev.ks if isinstance(ev.ks, (tuple, list)) else (ev.ks,)
  if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
    raise ConfigError(f"{where}.ks={ev.ks!r} must be a tuple of ints >= 1, e.g. (1, 5, 10)")


class Retrieval:
  """The prepared `retrieval` evaluator: embeds `num_examples` images and all their captions."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    self.ds, self.ks = data.EvalSet(name, ev, ctx), tuple(ev.ks)
    for method in ("encode_image", "encode_text"):
      data.require(self.ds, method)
    self.ds.require_field("caption", data.NEEDS_CAPTIONS)

  @functools.cached_property
  def texts(self) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(every caption, the image index of each, their tokens): read and tokenised at the first evaluation."""
    per_image = self.ds.captions()
    captions = [c for caps in per_image for c in caps]
    image_ids_T = np.asarray([i for i, caps in enumerate(per_image) for _ in caps])
    return captions, image_ids_T, self.ds.tokenize(captions)

  def evaluate(self, graphdef, params) -> dict[str, float]:
    from vlmjax.evals import data  # noqa: PLC0415
    captions, image_ids_T, tokens_TxL = self.texts
    image_IxE = data.embed_images(self.ds, graphdef, params)
    text_TxE = data.embed_texts(self.ds, graphdef, params, tokens_TxL)
    return recall_at_k(image_IxE, text_TxE, image_ids_T, self.ks, texts=captions, mesh=self.ds.mesh)


prepare = Retrieval
