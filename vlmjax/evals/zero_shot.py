"""Zero-shot classification: class names x prompt templates -> a text classifier; top-1/top-5 and
mean per-class recall, as CLIP and CLIP_benchmark report them.

Each class's prompts are embedded, averaged and renormalised into one class embedding (prompt
ensembling); an image is classified by its highest-scoring class. Ties are pessimistic (see
`ranking`): a wrong class scoring equal to the true one counts as ranked ahead of it. Classes
are the source's labels as they are: ImageNet's curated names list "missile" and "sunglasses"
twice, and choosing the other one is wrong, as in the papers (`merge_same_names=True` counts
either as right).

Templates: a named set (`shapes`, `photo`, `plain`, `openai_imagenet` = `imagenet1k`: OpenAI's
80; every dataset of CLIP_benchmark's English lists, e.g. `cifar10`, `sun397`), `dataset` (the
source's own file, e.g. a CLIP_benchmark webdataset's zeroshot_classification_templates.txt), or
a sequence of strings with one `{}`. Class names: from the source (its metadata: TFDS label
names, a webdataset's classnames.txt, folder names), a shipped list by dataset name
(`imagenet1k`: OpenAI's curated ImageNet names, and CLIP_benchmark's per-dataset lists), or a
file with one name per line. The shipped lists are vlmjax/evals/prompts.json
(scripts/make_prompts.py writes it from CLIP_benchmark).

Shape legend: I images, K classes, P prompt templates, E embedding dim.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Sequence

import ml_collections
import numpy as np

from vlmjax.errors import ConfigError, DataError
from vlmjax.evals import common

TEMPLATES = {
    # The shapes set's captions place a sized shape somewhere; prompts mimic them.
    "shapes": ("a small {}, center", "a large {}, center", "small {} at top left", "large {} at bottom right",
               "center: small {}", "top right: large {}"),
    "photo": ("a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.",
              "a photo of the small {}.", "a photo of the large {}.", "a low resolution photo of a {}.",
              "a bright photo of a {}.", "a drawing of a {}."),
    "plain": ("{}",),
}
ALIASES = {"openai_imagenet": "imagenet1k"}
DATASET = "dataset"  # the source's own templates


@functools.cache
def shipped() -> dict:
  """prompts.json: {"class_names": {dataset: [...]}, "templates": {dataset: [...]}}."""
  with open(os.path.join(os.path.dirname(__file__), "prompts.json")) as f:
    return json.load(f)


def template_sets() -> list[str]:
  return [*TEMPLATES, *ALIASES, DATASET, *sorted(shipped()["templates"])]


def templates(spec: str | Sequence[str], where: str, source_spec: str = "") -> tuple[str, ...]:
  """A named template set, `dataset` (the source's own), or a sequence of strings with one `{}`."""
  if isinstance(spec, str):
    if spec == DATASET:
      from vlmjax.data import sources  # noqa: PLC0415
      found = sources.templates(source_spec)
      if not found:
        raise ConfigError(f"{where}='dataset': {source_spec!r} has no templates of its own (a CLIP_benchmark "
                          f"webdataset's zeroshot_classification_templates.txt); name a set instead")
      return tuple(found)
    name = ALIASES.get(spec, spec)
    if name in TEMPLATES:
      return TEMPLATES[name]
    if name not in shipped()["templates"]:
      raise ConfigError(f"{where}={spec!r} is not a template set; valid: {', '.join(template_sets())} "
                        f"or a tuple of strings containing '{{}}'")
    return tuple(shipped()["templates"][name])
  out = tuple(spec)
  bad = [t for t in out if not isinstance(t, str) or t.count("{}") != 1]
  if not out or bad:
    raise ConfigError(f"{where}: every template needs exactly one '{{}}', got {bad or out!r}")
  return out


def class_names(source_spec: str, data_dir: str, class_names_file: str, where: str) -> tuple[str, ...]:
  """Class names in label order: a shipped list (by dataset name) or a file when set, else from the
  source's metadata."""
  if class_names_file and class_names_file in shipped()["class_names"] and not os.path.exists(class_names_file):
    return tuple(shipped()["class_names"][class_names_file])
  if class_names_file:
    if not os.path.isfile(class_names_file):
      raise ConfigError(f"{where}={class_names_file!r} is neither a file (one class name per line) nor a "
                        f"shipped list ({', '.join(sorted(shipped()['class_names']))})")
    with open(class_names_file) as f:
      names = tuple(line.strip() for line in f if line.strip())
    if not names:
      raise ConfigError(f"{where}={class_names_file!r} holds no class name (one per line)")
    return names
  from vlmjax.data import sources  # noqa: PLC0415 (configs import this module; keep it light)
  try:
    names = sources.class_names(source_spec, data_dir=data_dir or None)
  except DataError as e:
    raise DataError(f"{where}: {e}") from None
  if names is None:
    raise ConfigError(f"{where}: {source_spec!r} does not provide class names; set it to a file "
                      f"with one class name per line, or a shipped list (e.g. imagenet1k)")
  if names and all(re.fullmatch(r"n\d{8}", n) for n in names):
    raise ConfigError(f"{where}: {source_spec!r} names its classes by WordNet id; set it to imagenet1k "
                      f"(OpenAI's curated names, shipped) or a file with one readable class name per line")
  return names


def classifier(class_emb_KPxE: np.ndarray, num_classes: int) -> np.ndarray:
  """Averages each class's prompt embeddings ([K*P, E], class-major) and renormalises: [K, E]."""
  emb_KxPxE = class_emb_KPxE.reshape(num_classes, -1, class_emb_KPxE.shape[-1])
  mean_KxE = emb_KxPxE.mean(axis=1)
  return mean_KxE / np.linalg.norm(mean_KxE, axis=-1, keepdims=True)


def accuracy(image_IxE: np.ndarray, labels_I: np.ndarray, classes_KxE: np.ndarray, ks: Sequence[int] = (1, 5),
             *, names: Sequence[str] | None = None, mesh=None) -> dict[str, float]:
  """{"top1", "top5", ...}: fraction of images whose true class ranks within the top k.
  Given the class `names`, classes listed under the same name (ImageNet's usual list has two
  "sunglasses" and two "missile") count as one: either is right for both."""
  from vlmjax.evals import ranking  # noqa: PLC0415
  if len(labels_I) and (labels_I.min() < 0 or labels_I.max() >= len(classes_KxE)):
    raise ConfigError(f"labels lie in [{labels_I.min()}, {labels_I.max()}] but there are {len(classes_KxE)} classes")
  ids_K = np.arange(len(classes_KxE))
  if names is not None:
    first = {}
    ids_K = np.asarray([first.setdefault(n, k) for k, n in enumerate(names)])
  r = ranking.ranks(image_IxE, ids_K[labels_I], classes_KxE, ids_K, mesh=mesh)
  out = {f"top{k}": float(np.mean(r < k)) for k in ks}
  hit = r < 1  # mean per-class recall (balanced accuracy): top-1 within each true class, averaged
  present = np.unique(ids_K[labels_I])
  out["mean_per_class_recall"] = float(np.mean([hit[ids_K[labels_I] == c].mean() for c in present])) if len(
      present) else 0.0
  return out


def config(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", templates="photo", class_names: str = "",
           merge_same_names: bool = False) -> ml_collections.ConfigDict:
  """templates: a named set (shapes | photo | plain | openai_imagenet | a CLIP_benchmark dataset name),
  `dataset` (the source's own) or a tuple of strings with one '{}'.
  class_names: '' (from the source), a shipped list (imagenet1k, ...) or a file with one name per line,
  in label order. merge_same_names: classes listed under one name count as one."""
  c = common.fields("zero_shot", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode)
  c.templates = templates
  c.class_names = class_names
  c.merge_same_names = merge_same_names
  return c


def check(where: str, ev) -> None:
  """Templates and class names are checked by `prepare` (they may need the source)."""
  if not isinstance(ev.merge_same_names, bool):
    raise ConfigError(f"{where}.merge_same_names must be true or false, got {ev.merge_same_names!r}")


class ZeroShot:
  """The prepared `zero_shot` evaluator: eval set, class names, prompts (every class x template)."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    self.ds = data.EvalSet(name, ev, ctx)
    for method in ("encode_image", "encode_text"):
      data.require(self.ds, method)
    self.ds.require_field("label", data.NEEDS_LABELS)
    self.names = class_names(ev.data.source, ev.data.data_dir, ev.class_names, f"evals.{name}.class_names")
    prompts = templates(ev.templates, f"evals.{name}.templates", ev.data.source)
    self.merge = ev.merge_same_names
    self.prompt_tokens = self.ds.tokenize([t.format(c) for c in self.names for t in prompts])  # class-major

  def evaluate(self, graphdef, params) -> dict[str, float]:
    from vlmjax.evals import data  # noqa: PLC0415
    ds = self.ds
    text_emb = data.embed_texts(ds, graphdef, params, self.prompt_tokens)
    image_emb = data.embed_images(ds, graphdef, params)
    return accuracy(image_emb, ds.labels(), classifier(text_emb, len(self.names)),
                    names=self.names if self.merge else None, mesh=ds.mesh)


prepare = ZeroShot
