"""Captioning: decode captions for images and score them with pycocoevalcap (CIDEr-D, BLEU-4, ROUGE-L).

Captions are tokenised as pycocoevalcap does (Stanford PTBTokenizer, lowercased,
punctuation dropped). That tokenizer is Java; where `java` is not on PATH the
Python stand-in in `evals.ptb` is used instead (tested token for token against
it). METEOR is added where Java is present and asked for. Scores are on
pycocoevalcap's scale: CIDEr-D around 0-10 (x10 built in), BLEU-4 and ROUGE-L in [0, 1].
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import unicodedata
from typing import Hashable

import ml_collections

from vlmjax.errors import ConfigError
from vlmjax.evals import common

TOKENIZERS = ("auto", "java", "python")


def java_available() -> bool:
  return shutil.which("java") is not None


def tokenize(captions: dict[Hashable, list[str]], tokenizer: str = "auto") -> dict[Hashable, list[str]]:
  """pycocoevalcap-style tokenisation of {id: [caption, ...]}; `auto` picks Java when present.

  Control characters are dropped and every whitespace character becomes a space first, so
  each caption is exactly one line for the line-preserving tokenizer.
  """
  if tokenizer not in TOKENIZERS:
    raise ValueError(f"caption tokenizer must be one of {'|'.join(TOKENIZERS)}, got {tokenizer!r}")
  captions = {k: [_one_line(c) for c in v] for k, v in captions.items()}
  if tokenizer == "java" or (tokenizer == "auto" and java_available()):
    return _java_ptb(captions)
  from vlmjax.evals import ptb  # noqa: PLC0415
  return ptb.tokenize(captions)


def _one_line(caption: str) -> str:
  return "".join(" " if ch.isspace() else ch for ch in caption
                 if ch.isspace() or unicodedata.category(ch)[0] != "C")


def _java_ptb(captions: dict[Hashable, list[str]]) -> dict[Hashable, list[str]]:
  """What pycocoevalcap's PTBTokenizer.tokenize does (same jar, flags and punctuation list),
  reading stdin instead of a temporary file in site-packages and with CoreNLP's log silenced."""
  from pycocoevalcap.tokenizer import ptbtokenizer  # noqa: PLC0415
  jar = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
  lines = [c for v in captions.values() for c in v]
  proc = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                         "-lowerCase"], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
  tokenized = proc.stdout.split("\n")[:len(lines)]
  if len(tokenized) != len(lines):
    raise RuntimeError(f"PTBTokenizer returned {len(tokenized)} lines for {len(lines)} captions")
  it = iter(tokenized)
  return {k: [" ".join(w for w in next(it).rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS) for _ in v]
          for k, v in captions.items()}


def score(predictions: dict[Hashable, str], references: dict[Hashable, list[str]], *, meteor: bool = False,
          tokenizer: str = "auto") -> dict[str, float]:
  """{"cider", "bleu4", "rouge_l"} (+ "meteor" if asked for and Java is present) over all ids.

  `predictions` and `references` must have the same ids; each id needs at least one reference.
  """
  from pycocoevalcap.bleu.bleu import Bleu  # noqa: PLC0415
  from pycocoevalcap.cider.cider import Cider  # noqa: PLC0415
  from pycocoevalcap.rouge.rouge import Rouge  # noqa: PLC0415
  if set(predictions) != set(references):
    raise ValueError(f"predictions and references differ in ids: {len(set(predictions) ^ set(references))} "
                     f"ids are in only one of them")
  if not predictions:
    raise ValueError("no captions to score")
  empty = [k for k, v in references.items() if not v]
  if empty:
    raise ValueError(f"{len(empty)} ids have no reference caption, e.g. {empty[0]!r}")
  # One tokenizer call for both, as pycocoevalcap's COCOEvalCap does (one JVM start).
  keys = list(predictions)
  joined = {("res", k): [predictions[k]] for k in keys}  # references last: never empty lines at the end
  joined.update({("ref", k): list(references[k]) for k in keys})
  tok = tokenize(joined, tokenizer)
  gts = {i: tok[("ref", k)] for i, k in enumerate(keys)}
  res = {i: tok[("res", k)] for i, k in enumerate(keys)}
  with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its ratio
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {"cider": float(Cider().compute_score(gts, res)[0]), "bleu4": float(bleu[3]),
           "rouge_l": float(Rouge().compute_score(gts, res)[0])}
  if meteor and java_available():
    from pycocoevalcap.meteor.meteor import Meteor  # noqa: PLC0415
    out["meteor"] = float(Meteor().compute_score(gts, res)[0])
  return out


def decode_options(ev) -> dict:
  """The `generate` options of a captioning evaluator config."""
  return dict(max_len=ev.max_len, method=ev.method, beam_size=ev.beam_size, top_k=ev.top_k, top_p=ev.top_p,
              temperature=ev.temperature, length_penalty=ev.length_penalty)


def special_ids(tokenizer) -> dict:
  """{"bos_id", "eos_id"} of a data tokenizer (eos -1: none, decode to max_len)."""
  if tokenizer.bos is None:
    raise ConfigError("captioning needs a tokenizer with a BOS token to start decoding from; this one has none")
  return {"bos_id": tokenizer.bos, "eos_id": -1 if tokenizer.eos is None else tokenizer.eos}


def caption_images(ds, graphdef, params, options: dict, seed: int) -> list[str]:
  """Decoded captions of every example of an `EvalSet`, as text."""
  import jax  # noqa: PLC0415
  from vlmjax.evals import data, decode  # noqa: PLC0415
  data.require(ds, "caption_logits")
  options = {**options, **special_ids(ds.tokenizer)}
  out, bar = [], data.counter(ds, f"captioning ({options.get('method', 'greedy')})", ds.num_examples, "images")
  for b, (images, n) in enumerate(ds.image_batches()):
    tokens = decode.jit_generate(graphdef, params, images, jax.random.fold_in(jax.random.key(seed), b), **options)
    out += [ds.tokenizer.decode(row) for row in data.gather(tokens, n)]
    bar.update(n)
  bar.close()
  return out


METHODS = ("greedy", "beam", "sample")


def config(source: str, *, batch_size: int = 64, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", max_len: int = 32,
           method: str = "greedy", beam_size: int = 4, top_k: int = 0, top_p: float = 1.0,
           temperature: float = 1.0, length_penalty: float = 1.0, seed: int = 0,
           meteor: bool = True) -> ml_collections.ConfigDict:
  """method: greedy | beam | sample. meteor: add METEOR when Java is present."""
  c = common.fields("captioning", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode)
  c.update(dict(max_len=max_len, method=method, beam_size=beam_size, top_k=top_k, top_p=top_p,
                temperature=temperature, length_penalty=length_penalty, seed=seed, meteor=meteor))
  return c


def check(where: str, ev) -> None:
  if ev.method not in METHODS:
    raise ConfigError(f"{where}.method={ev.method!r} is unknown; valid: {', '.join(METHODS)}")
  check_decoding(where, max_len=ev.max_len, beam_size=ev.beam_size, top_k=ev.top_k, top_p=ev.top_p,
                 temperature=ev.temperature)
  for key, value in (("seed", ev.seed), ("length_penalty", ev.length_penalty)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
      raise ConfigError(f"{where}.{key}={value!r} is out of range; it must be >= 0")


def check_decoding(where: str, *, max_len, beam_size, top_k, top_p, temperature, vocab_size: int | None = None,
                   prefix: str = ".") -> None:
  """One-line ConfigError for decoding settings out of range (evaluators and `vlmjax caption`)."""
  limits = [("max_len", max_len, max_len > 0, "> 0"), ("beam_size", beam_size, beam_size > 0, "> 0"),
            ("top_k", top_k, top_k >= 0 and (vocab_size is None or top_k <= vocab_size),
             ">= 0" + (f" and <= the vocabulary ({vocab_size})" if vocab_size else "")),
            ("top_p", top_p, 0 < top_p <= 1, "in (0, 1]"), ("temperature", temperature, temperature > 0, "> 0")]
  for name, value, ok, valid in limits:
    if not ok:
      shown = f"--{name.replace('_', '-')}" if prefix == "--" else f"{where}.{name}"
      raise ConfigError(f"{shown}={value!r} is out of range; it must be {valid}")


class Captioning:
  """The prepared `captioning` evaluator: decodes `num_examples` images and scores against their captions."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    if ev.max_len > ctx.context_length:
      raise ConfigError(f"evals.{name}.max_len={ev.max_len} exceeds model.text.context_length={ctx.context_length}")
    self.ds = data.EvalSet(name, ev, ctx)
    data.require(self.ds, "caption_logits")
    self.ds.require_field("caption", data.NEEDS_CAPTIONS)
    try:
      special_ids(self.ds.tokenizer)
    except ConfigError as e:
      raise ConfigError(f"evals.{name}: {e}") from None
    self.options, self.seed, self.meteor = decode_options(ev), ev.seed, ev.meteor

  def evaluate(self, graphdef, params) -> dict[str, float]:
    captions = caption_images(self.ds, graphdef, params, self.options, self.seed)
    refs = self.ds.captions()
    self.outputs = [{"index": i, "key": str(m.get("key", i)), "caption": c, "references": r}
                    for i, (m, c, r) in enumerate(zip(self.ds.meta(), captions, refs))]  # eval/<step>/captions.jsonl
    return score(dict(enumerate(captions)), dict(enumerate(refs)), meteor=self.meteor)


prepare = Captioning
