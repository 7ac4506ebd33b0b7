"""Writes vlmjax/evals/prompts.json: the class names and zero-shot templates the papers evaluate with.

    /work/torchenv/bin/python scripts/make_prompts.py     # any venv with `pip install clip-benchmark`

Taken from the installed CLIP_benchmark package (MIT licence; its English lists: OpenAI's 80
ImageNet templates and curated ImageNet class names, and the per-dataset class names and templates
of the DataComp / VTAB tasks), with its `{c}` placeholder written as vlmjax's `{}`. vlmjax reads the
file at run time (`vlmjax.evals.prompts`); nothing is downloaded.
"""

from __future__ import annotations

import json
import os

import clip_benchmark

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vlmjax", "evals", "prompts.json")


def main() -> None:
  root = os.path.join(os.path.dirname(clip_benchmark.__file__), "datasets")
  with open(os.path.join(root, "en_classnames.json")) as f:
    names = json.load(f)
  with open(os.path.join(root, "en_zeroshot_classification_templates.json")) as f:
    templates = json.load(f)
  templates = {k: [t.replace("{c}", "{}") for t in v] for k, v in templates.items() if k != "dummy"}
  bad = [(k, t) for k, v in templates.items() for t in v if t.count("{}") != 1]
  assert not bad, bad
  from importlib.metadata import version
  out = {"source": f"clip_benchmark {version('clip_benchmark')} (MIT): datasets/en_classnames.json, "
                   "en_zeroshot_classification_templates.json; {c} written as {}",
         "class_names": names, "templates": templates}
  with open(OUT, "w") as f:
    json.dump(out, f, indent=0, ensure_ascii=False, sort_keys=True)
    f.write("\n")
  print(f"wrote {OUT}: class names of {len(names)} datasets, templates of {len(templates)}")


if __name__ == "__main__":
  main()
