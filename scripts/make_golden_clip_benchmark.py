"""Golden results of `clip_benchmark eval` (pip clip-benchmark) for vlmjax's parity test.

    /work/torchenv/bin/python scripts/make_golden_clip_benchmark.py   # a venv with torch, open_clip, clip-benchmark

Writes tests/fixtures/clip_benchmark/:
  wds_cls/      a zero-shot classification set in CLIP_benchmark's webdataset layout: test/0.tar,
                test/nshards.txt, classnames.txt, zeroshot_classification_templates.txt ({c}); 60
                32x32 PNG images of 12 classes (coloured blocks with noise), labels in `cls`
  wds_ret/      a retrieval set (dataset_type.txt = retrieval): 24 images, `txt` with 2 or 3 captions each
  model/        open_clip's `local-dir:` layout of the golden openclip_clip fixture (tests/fixtures/
                convert/openclip_clip.safetensors: the tiny quick-gelu CLIP, vocabulary 100; copied in
                while clip_benchmark runs, removed after) with a 100-word tokenizer (w0..w96, <unk>,
                <|startoftext|>, <|endoftext|>) as tokenizer.json
  results.json  `clip_benchmark eval`'s metrics on both sets, run as its users run it:
                `clip_benchmark eval --model local-dir:model --dataset wds/... --dataset_root ... --no_amp`

The vlmjax side (tests/test_eval_parity.py) imports the same weights with `vlmjax convert` and
evaluates the same folders with `wds:` sources.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "clip_benchmark")
WEIGHTS = os.path.join(ROOT, "tests", "fixtures", "convert", "openclip_clip.safetensors")
CLASSES = ["w10 w11", "w12", "w13 w14", "w15", "w16 w17", "w30", "w31 w32 w33", "w40", "w41 w5", "w50 w51", "w60",
           "w70 w71"]
TEMPLATES = ["w20 {c}", "w21 w22 {c}", "{c} w23"]
COLOURS = np.random.default_rng(7).integers(0, 256, (len(CLASSES), 3))


def image(rng, label: int) -> bytes:
  """A 32x32 block of the class's colour at a random place, on noise: PNG bytes (lossless)."""
  x = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
  r, c = rng.integers(0, 16, 2)
  x[r:r + 16, c:c + 16] = np.clip(COLOURS[label] + rng.integers(-30, 30, 3), 0, 255)
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, format="PNG")
  return buf.getvalue()


def write_tar(path: str, samples: list[dict]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w") as tar:
    for s in samples:
      for ext, data in s.items():
        if ext == "key":
          continue
        info = tarfile.TarInfo(f"{s['key']}.{ext}")
        info.size, info.mtime = len(data), 0
        tar.addfile(info, io.BytesIO(data))


def datasets(rng) -> None:
  labels = rng.integers(0, len(CLASSES), 60)
  write_tar(os.path.join(OUT, "wds_cls", "test", "0.tar"),
            [{"key": f"s{i:04d}", "png": image(rng, int(y)), "cls": str(int(y)).encode()} for i, y in enumerate(labels)])
  with open(os.path.join(OUT, "wds_cls", "test", "nshards.txt"), "w") as f:
    f.write("1\n")
  with open(os.path.join(OUT, "wds_cls", "classnames.txt"), "w") as f:
    f.write("\n".join(CLASSES) + "\n")
  with open(os.path.join(OUT, "wds_cls", "zeroshot_classification_templates.txt"), "w") as f:
    f.write("\n".join(TEMPLATES) + "\n")
  samples = []
  for i in range(24):
    captions = [" ".join(f"w{w}" for w in rng.integers(0, 97, rng.integers(2, 8))) for _ in range(2 + i % 2)]
    samples.append({"key": f"r{i:04d}", "png": image(rng, int(rng.integers(0, len(CLASSES)))),
                    "txt": "\n".join(captions).encode()})
  write_tar(os.path.join(OUT, "wds_ret", "test", "0.tar"), samples)
  with open(os.path.join(OUT, "wds_ret", "test", "nshards.txt"), "w") as f:
    f.write("1\n")
  with open(os.path.join(OUT, "wds_ret", "dataset_type.txt"), "w") as f:
    f.write("retrieval\n")


def model_dir() -> str:
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  d = os.path.join(OUT, "model")
  os.makedirs(d, exist_ok=True)
  vocab = {f"w{i}": i for i in range(97)}
  vocab.update({"<unk>": 97, "<|startoftext|>": 98, "<|endoftext|>": 99})
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
  tok.post_processor = processors.TemplateProcessing(
      single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 98), ("<|endoftext|>", 99)])
  tok.save(os.path.join(d, "tokenizer.json"))
  special = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="w0", unk_token="<unk>")
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=12, **special), f, indent=1)
  text = dict(context_length=12, vocab_size=100, width=64, heads=4, layers=2, hf_tokenizer_name="local-dir")
  vision = dict(image_size=32, layers=2, width=64, head_width=16, patch_size=8)
  pre = dict(size=32, mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711],
             interpolation="bicubic", resize_mode="shortest")
  with open(os.path.join(d, "open_clip_config.json"), "w") as f:
    json.dump(dict(model_cfg=dict(embed_dim=32, quick_gelu=True, vision_cfg=vision, text_cfg=text),
                   preprocess_cfg=pre), f, indent=1)
  shutil.copyfile(WEIGHTS, os.path.join(d, "open_clip_model.safetensors"))
  return d


def clip_benchmark(model: str, name: str, task: str, tmp: str) -> dict:
  out = os.path.join(tmp, f"{name}.json")
  cmd = [os.path.join(os.path.dirname(sys.executable), "clip_benchmark"), "eval", "--model", f"local-dir:{model}",
         "--pretrained", "none", "--dataset", f"wds/{name}", "--dataset_root", os.path.join(OUT, f"wds_{name}"),
         "--task", task, "--no_amp", "--batch_size", "8", "--num_workers", "0", "--recall_k", "1", "5", "10",
         "--output", out, "--quiet"]
  subprocess.run(cmd, check=True)
  with open(out) as f:
    return json.load(f)["metrics"]


def main() -> None:
  import tempfile
  shutil.rmtree(OUT, ignore_errors=True)
  datasets(np.random.default_rng(0))
  model = model_dir()
  with tempfile.TemporaryDirectory() as tmp:
    results = {"cls": clip_benchmark(model, "cls", "zeroshot_classification", tmp),
               "ret": clip_benchmark(model, "ret", "zeroshot_retrieval", tmp)}
  from importlib.metadata import version
  results["versions"] = {p: version(p) for p in ("clip_benchmark", "open_clip_torch", "torch")}
  os.remove(os.path.join(model, "open_clip_model.safetensors"))  # the test reads the convert fixture's copy
  with open(os.path.join(OUT, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
