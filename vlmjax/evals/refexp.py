"""Referring-expression accuracy: a LocCa decoder asked "ref {region text}:" must write the region's box.

For each of the first `num_examples` records with regions, one region (record i asks for region
i mod its count, so every object kind is asked across the set) is prompted, greedy-decoded
(`decode.generate` with the prompt), and the first four integers of the continuation read as a box
(`data.locca.parse_box`, the run's `box_bins`). Metrics: `accuracy` (predicted box IoU >= 0.5 with
the true one, the standard RefCOCO criterion), `mean_iou`, and `parsed` (the fraction of answers
that are a box at all). Regions are mapped through the evaluator's crop (`image_mode`) as training
maps them; a record whose regions fall outside the crop is left out and counted (`skipped`).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from vlmjax.data import locca, regions, transforms
from vlmjax.errors import ConfigError
from vlmjax.evals import common


def config(source: str, *, batch_size: int = 64, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", max_len: int = 0, params: str = "params") -> ml_collections.ConfigDict:
  """max_len: tokens decoded after `bos` (prompt included); 0: the model's text context length."""
  c = common.fields("refexp", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode, params=params)
  c.max_len = max_len
  return c


def check(where: str, ev) -> None:
  if not isinstance(ev.max_len, int) or isinstance(ev.max_len, bool) or ev.max_len < 0:
    raise ConfigError(f"{where}.max_len={ev.max_len!r} must be an int >= 0 (0: the model's context length)")


class RefExp:
  """The prepared `refexp` evaluator: the prompts and true boxes, built once."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import data  # noqa: PLC0415
    self.ds = data.EvalSet(name, ev, ctx)
    data.require(self.ds, "decode_step")
    self.ds.require_field("regions", "refexp needs records with regions (e.g. synthetic:shapes_multi:validation)")
    if ctx.context_length < 2 or ev.max_len > ctx.context_length:
      raise ConfigError(f"evals.{name}.max_len={ev.max_len} exceeds model.text.context_length={ctx.context_length}")
    self.max_len, self.bins = ev.max_len or ctx.context_length - 1, ctx.box_bins
    tok = self.ds.tokenizer
    if tok.bos is None:
      raise ConfigError(f"evals.{name}: refexp decodes from a prompt starting at BOS; tokenizer has none")
    prompts, self.boxes, self.rows = [], [], []
    for i, meta in enumerate(self.ds.meta()):
      rec = self.ds.source[i]
      w, h = transforms.original_size(rec["image"])
      kept = regions.crop(meta.get("regions") or [], transforms.crop_box(w, h, ev.image_mode, None), w, h)
      if not kept:
        continue
      region = kept[i % len(kept)]
      prompts.append(locca.prompt_ids(tok, locca.prompt("ref", region, self.bins), self.max_len + 1))
      self.boxes.append(np.asarray(region["box"], np.float64))
      self.rows.append(i)
    if not prompts:
      raise ConfigError(f"evals.{name}: no record of {ev.data.source!r} has a region inside the "
                        f"{ev.image_mode} crop; refexp needs regions")
    self.prompts = np.stack(prompts)
    self.skipped = self.ds.num_examples - len(self.rows)

  def evaluate(self, graphdef, params) -> dict[str, float]:
    from vlmjax.evals import data, decode  # noqa: PLC0415
    tok, ious, parsed, outputs = self.ds.tokenizer, [], 0, []
    by_row = dict(zip(self.rows, range(len(self.rows))))
    bar = data.counter(self.ds, "referring expressions", self.ds.num_examples, "images")
    for start, (images, n) in zip(range(0, self.ds.num_examples, self.ds.batch_size), self.ds.image_batches()):
      rows = self.prompts[[by_row.get(start + j, 0) for j in range(self.ds.batch_size)]]  # no region: any prompt
      prompt = self.ds.global_batch(rows.shape, lambda lo, hi, rows=rows: rows[lo:hi])
      tokens = data.gather(decode.jit_generate(graphdef, params, images, prompt_BxL=prompt, max_len=self.max_len,
                                               method="greedy", bos_id=tok.bos,
                                               eos_id=-1 if tok.eos is None else tok.eos), n)
      for j, row in enumerate(tokens):
        k = by_row.get(start + j)
        if k is None:
          continue
        plen = int(np.count_nonzero(self.prompts[k]))
        answer = tok.decode(row[plen - 1:])
        box = locca.parse_box(answer, self.bins)
        parsed += box is not None
        ious.append(0.0 if box is None else locca.iou(box, self.boxes[k]))
        outputs.append({"index": start + j, "answer": answer, "box": None if box is None else box.round(4).tolist(),
                        "target": self.boxes[k].round(4).tolist()})
      bar.update(n)
    bar.close()
    self.outputs = outputs
    count = max(1, len(ious))
    return {"accuracy": float(np.sum(np.asarray(ious) >= 0.5)) / count, "mean_iou": float(np.sum(ious)) / count,
            "parsed": parsed / count, "skipped": float(self.skipped)}


prepare = RefExp
