"""`vlmjax convert --to hf|open_clip`, checked in transformers and open_clip themselves (needs a venv with torch).

    .venv/bin/python scripts/check_export.py --torch-python /work/torchenv/bin/python [--keep DIR]

Step 1 (this venv, vlmjax): exports the golden fixtures' weights after importing them, and two runs
trained for 2 steps (SigLIP -> hf, CLIP -> open_clip), and computes vlmjax's embeddings on the
fixtures' inputs. Step 2 (the torch venv): loads every exported directory the way users do
(`AutoModel.from_pretrained`, `AutoTokenizer.from_pretrained`, `open_clip.create_model("local-dir:DIR")`,
which loads strictly) and prints the largest difference from vlmjax's embeddings; exit 1 above 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures", "convert")
CONFIGS = os.path.join(FIX, "tiny_configs.py")
CASES = (  # (name, import from, checkpoint, tokenizer, vocab override, export to, trained steps)
    ("hf_clip", "hf", "hf_clip", "clip", 101, "hf", 0),
    ("hf_siglip", "hf", "hf_siglip", "siglip", None, "hf", 0),
    ("openclip_clip", "open_clip", "openclip_clip.safetensors", "clip", 101, "open_clip", 0),
    ("openclip_coca", "open_clip", "openclip_coca.safetensors", "clip", 101, "open_clip", 0),
    ("hf_siglip", None, None, "siglip", None, "hf", 2),
    ("openclip_clip", None, None, "clip", 101, "open_clip", 2),
    ("hf_siglip", None, None, "gemma", 400, "hf", 2),  # SigLIP 2's tokenizer: GemmaTokenizer
)
TEXTS = ["w5 w7 w9", "w3 " * 20, ""]


def _vlmjax_side(work: str) -> list[dict]:
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import jax.numpy as jnp
  from flax import nnx
  from test_convert_export import word_tokenizer
  from vlmjax import cli, config, models, train, train_state
  from vlmjax.data import tokenizers
  from vlmjax.evals import commands as ev
  toks = {"clip": word_tokenizer(os.path.join(work, "clip_tok.json"), {98: "<|startoftext|>", 99: "<|endoftext|>"}),
          "siglip": word_tokenizer(os.path.join(work, "siglip_tok.json"), {0: "<pad>", 1: "</s>"})}
  toks["gemma"] = os.path.join(FIX, "gemma_tiny.model")
  cases = []
  for i, (name, source, ckpt, tok, vocab, to, steps) in enumerate(CASES):
    spec, run = f"{'gemma' if tok == 'gemma' else 'hf'}:{toks[tok]}", os.path.join(work, f"run{i}")
    overrides = [f"--config.model.text.vocab_size={vocab}"] if vocab else []
    if steps:
      cfg = config.load(f"{CONFIGS}:name={name}", (("total_steps", str(steps)), ("batch_size", "8"),
                                                  ("data.train.tokenizer", spec), *(
                                                      (("model.text.vocab_size", str(vocab)),) if vocab else ())))
      train.train(cfg, run)
    else:
      assert cli.main(["convert", "--from", source, "--checkpoint", os.path.join(FIX, ckpt), "--config",
                       f"{CONFIGS}:name={name}", "--tokenizer", spec, "--out", run, *overrides]) == 0
    out = os.path.join(work, f"export{i}_{to}")
    assert cli.main(["convert", "--to", to, "--workdir", run, "--out", out]) == 0
    cfg = ev.load_config_file(os.path.join(run, "config.json"), ())
    _, params, _ = train_state.restore_params(run, cfg, None)
    graphdef = nnx.split(models.abstract(cfg.model))[0]
    ref = np.load(os.path.join(FIX, f"{name}.npz"))
    text = ref["text"]
    offset = tokenizers.build(spec).shift
    after_eos = np.cumsum(np.cumsum(text == 99, axis=1), axis=1) > 1
    ours = np.where(after_eos, 0, text + offset) if offset else text
    o = nnx.merge(graphdef, params)(jnp.asarray(ref["image"]), jnp.asarray(ours))
    ids = [(tokenizers.build(spec).encode(t, 12) - offset).tolist() for t in TEXTS]
    np.savez(os.path.join(out, "vlmjax.npz"), image=ref["image"], text=text, image_emb=np.asarray(o.image_emb),
             text_emb=np.asarray(o.text_emb), ids=np.asarray(ids))
    cases.append(dict(dir=out, to=to, name=f"{name} ({'trained %d steps' % steps if steps else 'imported'})"))
  return cases


def _reference_side(cases: list[dict]) -> int:
  import open_clip
  import torch
  import transformers
  worst = 0.0
  for case in cases:
    d, v = case["dir"], np.load(os.path.join(case["dir"], "vlmjax.npz"))
    image, text = torch.tensor(v["image"]).permute(0, 3, 1, 2), torch.tensor(v["text"]).long()
    with torch.no_grad():
      if case["to"] == "hf":
        model = transformers.AutoModel.from_pretrained(d).eval()
        out = model(input_ids=text, pixel_values=image)
        img, txt = out.image_embeds, out.text_embeds
        tok = transformers.AutoTokenizer.from_pretrained(d)
        ids = tok(TEXTS, padding="max_length", max_length=12, truncation=True)["input_ids"]
        pad = tok.pad_token_id
      else:
        model = open_clip.create_model(f"local-dir:{d}").eval()  # strict=True
        out = model(image, text)
        img, txt = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
        tok = open_clip.get_tokenizer(f"local-dir:{d}")
        ids, pad = tok(TEXTS, context_length=12).tolist(), 0
    ours_ids = [[i if i >= 0 else pad for i in row] for row in v["ids"].tolist()]
    diff = max(float(np.abs(img.numpy() - v["image_emb"]).max()), float(np.abs(txt.numpy() - v["text_emb"]).max()))
    worst = max(worst, diff)
    same = "same" if ids == ours_ids else f"DIFFERENT: {ids} vs {ours_ids}"
    print(f"{case['name']:34s} -> {case['to']:9s} {type(model).__name__:10s} max |diff| {diff:.2e}  tokenizer ids {same}")
  print(f"transformers {transformers.__version__}, open_clip {open_clip.__version__}, torch {torch.__version__}")
  return 0 if worst <= 1e-5 else 1


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--torch-python", default="/work/torchenv/bin/python")
  p.add_argument("--keep", default=None, help="write the exports here (default: a temporary directory)")
  p.add_argument("--reference", default=None, help=argparse.SUPPRESS)  # step 2: the cases' JSON
  a = p.parse_args()
  if a.reference:
    with open(a.reference) as f:
      return _reference_side(json.load(f))
  work = a.keep or tempfile.mkdtemp(prefix="check_export_")
  os.makedirs(work, exist_ok=True)
  cases = _vlmjax_side(work)
  with open(os.path.join(work, "cases.json"), "w") as f:
    json.dump(cases, f)
  return subprocess.call([a.torch_python, os.path.abspath(__file__), "--reference", os.path.join(work, "cases.json")])


if __name__ == "__main__":
  sys.exit(main())
