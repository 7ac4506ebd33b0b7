"""Parity with CLIP_benchmark: the same converted open_clip weights on the same data in its webdataset
layout give `clip_benchmark eval`'s zero-shot accuracy, mean per-class recall and retrieval recalls
to 1e-4. The reference figures are tests/fixtures/clip_benchmark/results.json, written by
scripts/make_golden_clip_benchmark.py (clip-benchmark 1.6.2, open_clip 3.3, torch 2.15)."""

from __future__ import annotations

import json
import os

from vlmjax import cli
from vlmjax.evals import commands

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
BENCH = os.path.join(FIX, "clip_benchmark")


def test_zero_shot_and_retrieval_equal_clip_benchmark(tmp_path):
  ref = json.load(open(os.path.join(BENCH, "results.json")))
  out = str(tmp_path / "w")
  assert cli.main(["convert", "--from", "open_clip", "--checkpoint", os.path.join(FIX, "convert", "openclip_clip.safetensors"),
                   "--config", os.path.join(FIX, "convert", "tiny_configs.py:name=openclip_clip"),
                   "--tokenizer", f"hf:{os.path.join(BENCH, 'model', 'tokenizer.json')}",
                   "--config.model.text.vocab_size=101", "--out", out]) == 0
  evals = [("evals.cls", f"zero_shot:wds:{BENCH}/wds_cls"), ("evals.cls.templates", "dataset"),
           ("evals.cls.batch_size", "8"), ("evals.ret", f"retrieval:wds:{BENCH}/wds_ret"), ("evals.ret.batch_size", "8")]
  _, got, _, _ = commands.evaluate_workdir(out, evals)
  want = {"eval/cls/top1": ref["cls"]["acc1"], "eval/cls/top5": ref["cls"]["acc5"],
          "eval/cls/mean_per_class_recall": ref["cls"]["mean_per_class_recall"]}
  for k in (1, 5, 10):  # CLIP_benchmark's text retrieval is image -> text
    want[f"eval/ret/i2t_r{k}"] = ref["ret"][f"text_retrieval_recall@{k}"]
    want[f"eval/ret/t2i_r{k}"] = ref["ret"][f"image_retrieval_recall@{k}"]
  assert {k: round(got[k], 4) for k in want} == {k: round(v, 4) for k, v in want.items()}
  worst = max(abs(got[k] - v) for k, v in want.items())
  print(f"largest difference from clip_benchmark: {worst:.2e}")
  assert worst < 1e-4


def test_a_suite_runs_the_tasks_found_and_lists_the_missing(tmp_path, capsys):
  """`vlmjax eval --suite datacomp --suite-root ROOT`: the tasks whose folders exist (here Pets and
  Flickr30k, stand-ins made of the parity sets) run as their evaluators do on their own; the table
  gives DataComp's main metrics (mean per-class recall for Pets, mean recall@1 for retrieval) and
  their average, lists the missing tasks, and lands in eval/<step>/datacomp.md and .json."""
  root = tmp_path / "evalsets"
  root.mkdir()
  os.symlink(os.path.join(BENCH, "wds_cls"), root / "wds_vtab-pets")
  os.symlink(os.path.join(BENCH, "wds_ret"), root / "wds_flickr30k")
  out = str(tmp_path / "w")
  assert cli.main(["convert", "--from", "open_clip", "--checkpoint", os.path.join(FIX, "convert", "openclip_clip.safetensors"),
                   "--config", os.path.join(FIX, "convert", "tiny_configs.py:name=openclip_clip"),
                   "--tokenizer", f"hf:{os.path.join(BENCH, 'model', 'tokenizer.json')}",
                   "--config.model.text.vocab_size=101", "--out", out]) == 0
  capsys.readouterr()
  assert cli.main(["eval", "--workdir", out, "--suite", "datacomp", "--suite-root", str(root),
                   "--config.evals.datacomp.batch_size=8"]) == 0
  printed = capsys.readouterr().out
  assert "evals.datacomp: suite datacomp: 2 of 32 tasks found under" in printed and "missing: caltech101, cars, cifar10," in printed
  report = json.load(open(os.path.join(out, "eval", "0", "datacomp.json")))
  ref = json.load(open(os.path.join(BENCH, "results.json")))
  pets, flickr = report["tasks"]
  assert (pets["task"], pets["metric"]) == ("pets", "mean_per_class_recall")
  assert abs(pets["value"] - ref["cls"]["mean_per_class_recall"]) < 1e-4
  mean_r1 = (ref["ret"]["image_retrieval_recall@1"] + ref["ret"]["text_retrieval_recall@1"]) / 2
  assert (flickr["task"], flickr["metric"]) == ("flickr30k", "mean_recall@1") and abs(flickr["value"] - mean_r1) < 1e-4
  assert abs(report["average"] - (pets["value"] + flickr["value"]) / 2) < 1e-9 and len(report["missing"]) == 30
  table = open(os.path.join(out, "eval", "0", "datacomp.md")).read()
  assert "| pets | mean_per_class_recall |" in table and "| **average** (2 tasks) |" in table and table in printed
  assert "Not evaluated by vlmjax" in table and "fairness/geode" in table
  rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
  assert rows[-1]["eval/datacomp/average"] == report["average"] and "eval/datacomp/pets/top1" in rows[-1]
  assert cli.main(["eval", "--workdir", out, "--suite", "datacomp"]) == 2  # --suite-root goes with it
  assert cli.main(["eval", "--workdir", out, "--suite", "nosuch", "--suite-root", str(root)]) == 2
  assert "evals.nosuch.suite='nosuch' is unknown; valid: datacomp" in capsys.readouterr().err
