"""LocCa's decoder tasks (Wan et al., 2024; SigLIP 2's decoder objective) as token sequences.

Each training example gives its decoder one task, drawn per example from `data.train.locca`'s
weights (`cap`, `ref`, `gcap`):

  cap    captioning            prompt: (none)                 target: the caption
  ref    referring expression  prompt: "ref {region text}:"   target: the region's box
  gcap   grounded captioning   prompt: "gcap {box}:"          target: the region's text

A box is written as text, "x0 y0 x1 y1" with each coordinate quantised to an integer in
[0, box_bins - 1] (`round(c * (box_bins - 1))`), so it becomes ordinary tokens of whatever
tokenizer the run uses (LocCa writes coordinates as text tokens too). Captioning has no prompt,
so a LocCa-trained decoder captions from `bos` like any captioner (the captioning evaluator
works unchanged); the other tasks put their prompt after `bos` and are decoded from it.

A sequence is [bos] prompt target [eos], zero-padded: `decoder_text` (int32 [L]) and
`decoder_loss` (bool [L], true at the tokens to predict: the target and its eos). The prompt and
the target are tokenised separately (a BPE merge never joins them), then concatenated; a
sequence too long for L keeps its prompt and loses the end of the target (eos kept).
"""

from __future__ import annotations

import re

import ml_collections
import numpy as np

from vlmjax.errors import ConfigError

TASKS = ("cap", "ref", "gcap")
REGION_TASKS = ("ref", "gcap")
_INT = re.compile(r"-?\d+")


def active(cfg: ml_collections.ConfigDict) -> bool:
  """Whether `data.train.locca` gives the decoder any task (all weights 0: LocCa off)."""
  return any(cfg[t] > 0 for t in TASKS)


def check(cfg: ml_collections.ConfigDict, where: str = "data.train.locca") -> None:
  """One-line ConfigErrors for task weights and box bins that cannot work."""
  for t in TASKS:
    if not isinstance(cfg[t], (int, float)) or isinstance(cfg[t], bool) or cfg[t] < 0:
      raise ConfigError(f"{where}.{t}={cfg[t]!r} must be a number >= 0 (the weight of the {t} task)")
  if not isinstance(cfg.box_bins, int) or isinstance(cfg.box_bins, bool) or cfg.box_bins < 2:
    raise ConfigError(f"{where}.box_bins={cfg.box_bins!r} must be an int >= 2 (coordinates become 0..box_bins-1)")


def needs_regions(cfg: ml_collections.ConfigDict) -> bool:
  return active(cfg) and any(cfg[t] > 0 for t in REGION_TASKS)


def box_text(box, bins: int) -> str:
  """[x0, y0, x1, y1] in [0, 1] -> "q0 q1 q2 q3", each round(c * (bins - 1))."""
  q = np.clip(np.round(np.asarray(box, np.float64) * (bins - 1)), 0, bins - 1).astype(int)
  return " ".join(str(v) for v in q)


def parse_box(text: str, bins: int) -> np.ndarray | None:
  """The first four integers of `text` as a box in [0, 1] (inverse of `box_text`), or None: fewer
  than four, or an empty box."""
  ints = [int(v) for v in _INT.findall(text)[:4]]
  if len(ints) < 4:
    return None
  box = np.clip(np.asarray(ints, np.float64) / (bins - 1), 0.0, 1.0)
  return box if box[2] > box[0] and box[3] > box[1] else None


def iou(a, b) -> float:
  """Intersection over union of two [x0, y0, x1, y1] boxes."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


def prompt(task: str, region: dict | None, bins: int) -> str:
  if task == "cap":
    return ""
  if task == "ref":
    return f"ref {region['text']}:"
  return f"gcap {box_text(region['box'], bins)}:"


def target(task: str, caption: str, region: dict | None, bins: int) -> str:
  if task == "cap":
    return caption
  return box_text(region["box"], bins) if task == "ref" else region["text"]


def _ids(tokenizer, text: str) -> list[int]:
  """The tokens of `text` without bos, eos or padding."""
  if not text:
    return []
  ids = tokenizer.encode(text, 4 * len(text.encode("utf-8")) + 4).tolist()
  return [i for i in ids if i not in (0, tokenizer.bos, tokenizer.eos)]


def sequence(tokenizer, prompt_text: str, target_text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
  """([bos] prompt target [eos] zero-padded to `length`, the mask of the tokens to predict)."""
  head = ([tokenizer.bos] if tokenizer.bos is not None else []) + _ids(tokenizer, prompt_text)
  tail = _ids(tokenizer, target_text)[:max(0, length - len(head) - 1)]
  ids = (head + tail + [tokenizer.eos])[:length]
  text, loss = np.zeros((length,), np.int32), np.zeros((length,), bool)
  text[:len(ids)] = ids
  loss[len(head):len(ids)] = True
  return text, loss


def prompt_ids(tokenizer, prompt_text: str, length: int) -> np.ndarray:
  """[bos] prompt, zero-padded to `length`: what decoding starts from."""
  head = (([tokenizer.bos] if tokenizer.bos is not None else []) + _ids(tokenizer, prompt_text))[:length]
  out = np.zeros((length,), np.int32)
  out[:len(head)] = head
  return out


def draw_task(cfg: ml_collections.ConfigDict, has_regions: bool, rng: np.random.Generator) -> str:
  """One task by the configured weights; examples without regions can only be captioned."""
  weights = np.asarray([cfg[t] if (t == "cap" or has_regions) else 0.0 for t in TASKS], np.float64)
  if weights.sum() <= 0:
    return "cap"
  return TASKS[int(rng.choice(len(TASKS), p=weights / weights.sum()))]


def example(cfg: ml_collections.ConfigDict, tokenizer, caption: str, regions: list[dict] | None, length: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """The decoder's (decoder_text, decoder_loss) for one training example: a task drawn from the weights,
  and for region tasks one of its regions."""
  task = draw_task(cfg, bool(regions), rng)
  region = regions[int(rng.integers(len(regions)))] if task != "cap" else None
  return sequence(tokenizer, prompt(task, region, cfg.box_bins), target(task, caption, region, cfg.box_bins),
                  length)


def check_config(cfg: ml_collections.ConfigDict, has_decoder: bool) -> None:
  """LocCa's decoder tasks need a model with a decoder over image tokens (`has_decoder`) and a caption loss."""
  check(cfg.data.train.locca)
  if not active(cfg.data.train.locca):
    return
  if not has_decoder:
    raise ConfigError(f"data.train.locca gives decoder tasks but model.name={cfg.model.name!r} has no decoder "
                      "over image tokens; use model.name=siglip2 or captioner, or set the locca weights to 0")
  if not cfg.loss.get("caption_weight"):
    raise ConfigError("data.train.locca gives decoder tasks but loss.caption_weight is 0: nothing would "
                      "train the decoder; set loss.caption_weight > 0")
