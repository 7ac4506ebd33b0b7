"""One home for evaluation results: `eval/<step>.json`, `eval/<step>/captions.jsonl`, metrics.jsonl, TensorBoard.

Every evaluation (during training, `vlmjax eval`, sweeps through either) ends in `write`: the
metrics of `step` merged into `WORKDIR/eval/<step>.json` (an evaluator run again replaces its own
keys), the generated captions of captioning evaluators as one JSON line each in
`WORKDIR/eval/<step>/captions.jsonl` ({"eval", "index", "key", "caption", "references"}); `vlmjax
eval` also appends the metrics to metrics.jsonl and TensorBoard (`append_to_logs`), which training
does through its own writer. Metric names are `eval/<evaluator>/<metric>` with nothing TensorBoard
would rename (no `@`: recall at k is `i2t_r1`). Files are replaced whole (written beside, renamed).
"""

from __future__ import annotations

import json
import math
import os

CAPTIONS = "captions.jsonl"


def _replace(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write(workdir: str, step: int, metrics: dict[str, float], outputs: dict[str, list[dict]] | None = None,
          tables: dict[str, str] | None = None) -> str:
  """Merges `metrics` into eval/<step>.json, writes the evaluators' `outputs` (captions) and `tables`
  (file name -> text, under eval/<step>/); returns the JSON's path. Process 0 only (the caller checks)."""
  from vlmjax import metrics as metric_rows  # noqa: PLC0415
  path = os.path.join(workdir, "eval", f"{step}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  row: dict = {}
  if os.path.isfile(path):
    try:
      with open(path) as f:
        row = json.load(f)
    except (OSError, ValueError):
      row = {}  # an unreadable earlier file is replaced
    ran = {k.split("/")[1] for k in metrics if k.startswith("eval/")}
    row = {k: v for k, v in row.items() if not (k.startswith("eval/") and k.split("/")[1] in ran)}
    row.pop("nonfinite", None)
  row.update({"step": step, **metrics})
  _replace(path, json.dumps(metric_rows.strict(row), indent=2, sort_keys=True) + "\n")  # strict JSON
  for filename, text in (tables or {}).items():
    os.makedirs(os.path.join(workdir, "eval", str(step)), exist_ok=True)
    _replace(os.path.join(workdir, "eval", str(step), filename), text)
  rows = [{"eval": name, **r} for name, rs in (outputs or {}).items() for r in rs]
  if rows:
    folder = os.path.join(workdir, "eval", str(step))
    os.makedirs(folder, exist_ok=True)
    captions = os.path.join(folder, CAPTIONS)
    kept = []
    if os.path.isfile(captions):  # other evaluators' captions of this step stay
      with open(captions) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get("eval") not in outputs]
    _replace(captions, "".join(kept) + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  return path


def append_to_logs(workdir: str, step: int, metrics: dict[str, float]) -> None:
  """Appends one row of `metrics` to metrics.jsonl and TensorBoard (`tb/`), as training logs them."""
  from tensorboardX import SummaryWriter  # noqa: PLC0415
  from vlmjax import metrics as metric_rows  # noqa: PLC0415
  row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps(metric_rows.strict(row)) + "\n")
  tb = SummaryWriter(os.path.join(workdir, "tb"))
  for k, v in row.items():
    if k != "step" and math.isfinite(v):
      tb.add_scalar(k, v, step)
  tb.close()
