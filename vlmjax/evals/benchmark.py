"""The `suite` evaluator: a named list of benchmark tasks, run on whichever of them exist under a root.

    vlmjax eval --workdir RUN --suite datacomp --suite-root /data/evalsets
    c.evals.bench = defaults.suite("/data/evalsets", suite="datacomp")       # in a config

A task is a zero-shot classification or retrieval set in CLIP_benchmark's webdataset layout
(`wds:ROOT/wds_<task>`, `/` in the task name written `-`, as CLIP_benchmark and DataComp publish
them: `wds_imagenet1k`, `wds_vtab-cifar100`, `wds_flickr30k`; `ROOT/<task>` is found too). Tasks
whose folder is missing are listed, not dropped, and the average is over the tasks found. Each
task reports its evaluator's metrics as `<task>/<metric>` and its main metric as `<task>/main`
(DataComp's: top-1, mean per-class recall for Caltech-101, FGVC Aircraft, Flowers and Pets, and
for retrieval the mean of image->text and text->image recall@1); `average` is their mean
(DataComp-style). The table (task, metric, value; then missing and unsupported tasks) is left
in `tables` as markdown and JSON for `results.write` (`eval/<step>/<name>.md`, `.json`).

Suites: `datacomp` (DataComp's 38 tasks: the 32 vlmjax evaluates; WinoGAViL, the WILDS and fairness
sets need metrics vlmjax lacks and are listed as unsupported), `imagenet` (ImageNet and its five
distribution shifts), `vtab` (the VTAB tasks of DataComp), `retrieval` (Flickr30k 1k, COCO 5k).
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from vlmjax.errors import ConfigError
from vlmjax.evals import common

MEAN_PER_CLASS = ("vtab/caltech101", "fgvc_aircraft", "vtab/flowers", "vtab/pets")
RETRIEVAL = ("retrieval/flickr30k", "retrieval/mscoco_2014_5k_test_image_text_retrieval")
IMAGENET = ("imagenet1k", "imagenet_sketch", "imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r")
VTAB = ("vtab/caltech101", "vtab/cifar100", "vtab/clevr_count_all", "vtab/clevr_closest_object_distance", "vtab/dtd",
        "vtab/eurosat", "vtab/kitti_closest_vehicle_distance", "vtab/flowers", "vtab/pets", "vtab/pcam",
        "vtab/resisc45", "vtab/svhn")
CLASSIFICATION = (*VTAB, "cifar10", "country211", "fgvc_aircraft", "food101", "gtsrb", *IMAGENET, "mnist",
                  "objectnet", "voc2007", "renderedsst2", "cars", "stl10", "sun397")
UNSUPPORTED = ("misc/winogavil", "wilds/iwildcam", "wilds/camelyon17", "wilds/fmow", "fairness/dollar_street",
               "fairness/geode")
SUITES = {"datacomp": (*sorted(CLASSIFICATION, key=lambda t: t.rsplit("/", 1)[-1]), *RETRIEVAL),
          "imagenet": IMAGENET, "vtab": VTAB, "retrieval": RETRIEVAL}
ALIASES = {"retrieval/mscoco_2014_5k_test_image_text_retrieval": "mscoco"}  # DataComp's folder for it


def short(task: str) -> str:
  """The name a task's metrics carry: `vtab/cifar100` -> `cifar100`, COCO's long name -> `mscoco`."""
  return ALIASES.get(task, task.rsplit("/", 1)[-1])


def folders(root: str, task: str) -> list[str]:
  name = ALIASES.get(task, task)
  return [os.path.join(root, f"wds_{name.replace('/', '-')}"), os.path.join(root, f"wds_{short(task)}"),
          os.path.join(root, name)]


def config(source: str, *, batch_size: int = 256, every: int = 0, num_examples: int = 0,
           image_mode: str = "center_crop", suite: str = "datacomp") -> ml_collections.ConfigDict:
  """source: the root holding the tasks' folders; suite: a name of `SUITES`; num_examples caps each task."""
  c = common.fields("suite", source, batch_size=batch_size, every=every, num_examples=num_examples,
                    image_mode=image_mode)
  c.suite = suite
  return c


def check(where: str, ev) -> None:
  if ev.suite not in SUITES:
    raise ConfigError(f"{where}.suite={ev.suite!r} is unknown; valid: {', '.join(SUITES)}")


def _task_config(task: str, folder: str, ev) -> ml_collections.ConfigDict:
  from vlmjax.data import sources  # noqa: PLC0415
  from vlmjax.evals import retrieval, zero_shot  # noqa: PLC0415
  source = f"wds:{folder}"
  opts = dict(batch_size=ev.batch_size, num_examples=ev.num_examples, image_mode=ev.image_mode)
  if task in RETRIEVAL:
    out = retrieval.config(source, **opts)
  else:
    own = sources.templates(source)
    name = "imagenet1k" if task in IMAGENET else short(task)
    templates = "dataset" if own else name if name in zero_shot.shipped()["templates"] else "photo"
    out = zero_shot.config(source, templates=templates, **opts)
  out.max_patches = ev.get("max_patches", 0)  # NaFlex runs: every task at the suite's budget
  return out


class Suite:
  """The prepared `suite` evaluator: each task found under the root, prepared as its own evaluator."""

  def __init__(self, name: str, ev, ctx):
    from vlmjax.evals import retrieval, zero_shot  # noqa: PLC0415
    kinds = {"zero_shot": zero_shot, "retrieval": retrieval}  # built complete here: no registry lookup
    root = ev.data.source
    if not os.path.isdir(root):
      raise ConfigError(f"evals.{name}.data.source={root!r} is not a directory (the root holding the "
                        f"{ev.suite} tasks' folders, e.g. wds_imagenet1k)")
    self.name, self.suite, self.root, self.prepared, self.missing = name, ev.suite, root, {}, []
    for task in SUITES[ev.suite]:
      folder = next((f for f in folders(root, task) if os.path.isdir(f)), None)
      if folder is None:
        self.missing.append(task)
        continue
      cfg, where = _task_config(task, folder, ev), f"{name}.{short(task)}"
      common.check(f"evals.{where}", cfg)
      kinds[cfg.type].check(f"evals.{where}", cfg)
      self.prepared[task] = (cfg.type, kinds[cfg.type].prepare(where, cfg, ctx))
    self.unsupported = list(UNSUPPORTED) if ev.suite == "datacomp" else []
    found = len(self.prepared)
    if jax.process_index() == 0:  # one line per run, not per host
      print(f"evals.{name}: suite {ev.suite}: {found} of {len(SUITES[ev.suite])} tasks found under {root}"
            + (f"; missing: {', '.join(map(short, self.missing))}" if self.missing else ""), flush=True)
    if not found:
      raise ConfigError(f"evals.{name}: none of the {ev.suite} tasks is under {root!r} (looked for "
                        f"{os.path.basename(folders(root, SUITES[ev.suite][0])[0])} and the like)")
    self.tables: dict[str, str] = {}

  def evaluate(self, graphdef, params) -> dict[str, float]:
    out, rows = {}, []
    for task, (type_, prepared) in self.prepared.items():
      metrics = prepared.evaluate(graphdef, params)
      main_name, main = main_metric(task, type_, metrics)
      out.update({f"{short(task)}/{k}": float(v) for k, v in metrics.items()})
      out[f"{short(task)}/main"] = main
      rows.append({"task": short(task), "metric": main_name, "value": main, "metrics": metrics})
    out["average"] = float(np.mean([r["value"] for r in rows]))
    out["tasks_found"] = float(len(rows))
    self.tables = table(self.name, self.suite, self.root, rows, out["average"], self.missing, self.unsupported)
    return out


def main_metric(task: str, type_: str, metrics: dict) -> tuple[str, float]:
  if type_ == "retrieval":
    return "mean_recall@1", float((metrics["i2t_r1"] + metrics["t2i_r1"]) / 2)
  key = "mean_per_class_recall" if task in MEAN_PER_CLASS else "top1"
  return key, float(metrics[key])


def table(name: str, suite: str, root: str, rows: list[dict], average: float, missing: list[str],
          unsupported: list[str]) -> dict[str, str]:
  """{"<name>.md": the table as markdown, "<name>.json": everything as JSON}."""
  lines = [f"# {suite} ({len(rows)} of {len(rows) + len(missing)} tasks found under {root})", "",
           "| task | metric | value |", "|---|---|---|"]
  lines += [f"| {r['task']} | {r['metric']} | {r['value']:.4f} |" for r in rows]
  lines += [f"| **average** ({len(rows)} tasks) | | **{average:.4f}** |", ""]
  if missing:
    lines.append(f"Missing (no folder under the root): {', '.join(map(short, missing))}.")
  if unsupported:
    lines.append(f"Not evaluated by vlmjax (their metrics are not implemented): {', '.join(unsupported)}.")
  report = {"suite": suite, "root": root, "average": average, "tasks": rows, "missing": [short(t) for t in missing],
            "unsupported": unsupported}
  return {f"{name}.md": "\n".join(lines) + "\n", f"{name}.json": json.dumps(report, indent=1) + "\n"}


prepare = Suite
