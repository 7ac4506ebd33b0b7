"""`vlmjax convert --to hf|open_clip --workdir RUN`: a run as the reference library's model directory.

Round trips through the golden fixtures (written by transformers and open_clip, scripts/make_golden.py):
import the reference's weights, export them, and the exported tensors equal the reference's, the
exported config.json states the reference's architecture, and the tokenizer files reproduce the run's
ids. `scripts/check_export.py` (a venv with torch) loads the exported directories in transformers and
open_clip themselves.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from vlmjax import cli
from vlmjax.convert import io

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "convert")
CONFIGS = os.path.join(FIX, "tiny_configs.py")
WORDS = [f"w{i}" for i in range(98)]


def word_tokenizer(path: str, specials: dict[int, str]) -> str:
  """A 100-token word-level tokenizer.json whose special tokens sit at the fixtures' ids (<unk> at 97)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(WORDS + ["w98", "w99"])}
  for i, name in {97: "<unk>", **specials}.items():
    vocab.pop(next(w for w, j in vocab.items() if j == i))
    vocab[name] = i
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(list(specials.values()))
  tok.save(path)
  return path


def imported(tmp_path, source: str, checkpoint: str, name: str, tokenizer: str | None, *overrides) -> str:
  out = str(tmp_path / f"in_{name}")
  argv = ["convert", "--from", source, "--checkpoint", os.path.join(FIX, checkpoint), "--config",
          f"{CONFIGS}:name={name}", "--out", out, *overrides]
  assert cli.main(argv + (["--tokenizer", tokenizer] if tokenizer else [])) == 0
  return out


def same_tensors(exported: str, reference: str) -> None:
  ours, ref = io.read(exported), io.read(reference)
  assert sorted(ours) == sorted(ref)
  for k in ref:
    assert ours[k].shape == ref[k].shape, k
    np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def test_hf_clip_round_trip_writes_what_transformers_wrote(tmp_path, capsys):
  """hf_clip imported with a tokenizer that shifts ids (no pad token) and exported again: the same tensors
  (the pad row dropped, logit_scale 0-d), a config.json with the reference's architecture fields, and
  tokenizer files adding <|startoftext|> / <|endoftext|> as vlmjax does."""
  tok = word_tokenizer(str(tmp_path / "tok.json"), {98: "<|startoftext|>", 99: "<|endoftext|>"})
  run = imported(tmp_path, "hf", "hf_clip", "hf_clip", f"hf:{tok}", "--config.model.text.vocab_size=101")
  out = str(tmp_path / "hf")
  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--out", out]) == 0
  assert "(hf: hf_clip, " in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
  same_tensors(os.path.join(out, "model.safetensors"), os.path.join(FIX, "hf_clip", "model.safetensors"))
  ours, ref = (json.load(open(os.path.join(d, "config.json"))) for d in (out, os.path.join(FIX, "hf_clip")))
  assert ours["model_type"] == ref["model_type"] and ours["projection_dim"] == ref["projection_dim"]
  for tower in ("text_config", "vision_config"):
    for key, value in ours[tower].items():
      if key != "projection_dim":  # the fixture's towers keep transformers' default; the model reads the top level
        assert value == ref[tower][key], (tower, key)
  from tokenizers import Tokenizer
  from vlmjax.data import tokenizers
  text = "w5 w7 w9"
  exported = Tokenizer.from_file(os.path.join(out, "tokenizer.json")).encode(text).ids
  assert exported == [98, 5, 7, 9, 99]
  assert exported == [i - 1 for i in tokenizers.build(f"hf:{tok}").encode(text, 12)[:5]]


@pytest.mark.parametrize("checkpoint, name, arch", [("hf_siglip", "hf_siglip", "SiglipModel"),
                                                    ("hf_siglip2", "hf_siglip2_naflex", "Siglip2Model")])
def test_hf_siglip_round_trip(tmp_path, checkpoint, name, arch):
  """SiglipModel, and Siglip2Model (NaFlex) imported into model.vision.kind=naflex, exported again: the same
  tensors, a config.json with the reference's architecture fields; Siglip2's with a Siglip2ImageProcessor
  config at the run's budget."""
  tok = word_tokenizer(str(tmp_path / "tok.json"), {0: "<pad>", 1: "</s>"})
  run = imported(tmp_path, "hf", checkpoint, name, f"hf:{tok}")
  out = str(tmp_path / "hf")
  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--out", out]) == 0
  same_tensors(os.path.join(out, "model.safetensors"), os.path.join(FIX, checkpoint, "model.safetensors"))
  ours, ref = (json.load(open(os.path.join(d, "config.json"))) for d in (out, os.path.join(FIX, checkpoint)))
  assert ours["architectures"] == [arch] and ours["model_type"] == ref["model_type"]
  for tower in ("text_config", "vision_config"):
    for key, value in ours[tower].items():
      if not key.endswith("token_id"):
        assert value == ref[tower][key], (tower, key)
  if checkpoint == "hf_siglip":
    assert ours["text_config"]["eos_token_id"] == 1 and ours["text_config"]["pad_token_id"] == 0
    return
  pre = json.load(open(os.path.join(out, "preprocessor_config.json")))
  assert pre["image_processor_type"] == "Siglip2ImageProcessor" and pre["max_num_patches"] == 16
  assert pre["patch_size"] == 8


@pytest.mark.parametrize("name", ["openclip_clip", "openclip_coca"])
def test_open_clip_round_trip(tmp_path, name):
  """open_clip CLIP and CoCa exported from imported weights: the reference's tensors, and a model_cfg
  stating the architecture make_golden.py built (open_clip's `local-dir:` layout)."""
  tok = word_tokenizer(str(tmp_path / "tok.json"), {98: "<|startoftext|>", 99: "<|endoftext|>"})
  run = imported(tmp_path, "open_clip", f"{name}.safetensors", name, f"hf:{tok}", "--config.model.text.vocab_size=101")
  out = str(tmp_path / "oc")
  assert cli.main(["convert", "--to", "open_clip", "--workdir", run, "--out", out]) == 0
  same_tensors(os.path.join(out, "open_clip_model.safetensors"), os.path.join(FIX, f"{name}.safetensors"))
  cfg = json.load(open(os.path.join(out, "open_clip_config.json")))["model_cfg"]
  text = dict(context_length=12, vocab_size=100, width=64, heads=4, layers=2, mlp_ratio=4.0)
  assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors",
                                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
  if name == "openclip_clip":
    assert cfg == dict(embed_dim=32, quick_gelu=True, text_cfg=dict(text, hf_tokenizer_name="local-dir"), vision_cfg=dict(
        image_size=32, layers=2, width=64, head_width=16, mlp_ratio=4.0, patch_size=8))
  else:
    assert cfg["vision_cfg"] == dict(image_size=32, layers=2, width=48, head_width=16, mlp_ratio=4.0, patch_size=8,
                                     attentional_pool=True, attn_pooler_queries=9, attn_pooler_heads=4,
                                     output_tokens=True)
    assert cfg["text_cfg"] == dict(text, embed_cls=True, output_tokens=True, hf_tokenizer_name="local-dir")
    assert cfg["custom_text"] is True
    assert cfg["multimodal_cfg"] == dict(text, attn_pooler_heads=4) and cfg["quick_gelu"] is False


def test_a_trained_run_exports_and_bad_exports_are_one_line(tmp_path, capsys):
  """A trained run's step exports; a layout the target cannot express, a used --out, a bytes-tokenised
  run to HF CLIP and flags that do not go with --to are one line, exit 2, nothing written."""
  from vlmjax import config, train
  cfg = config.load(f"{CONFIGS}:name=hf_siglip", (("total_steps", "2"), ("ckpt_every", "1"), ("batch_size", "8"),
                                                   ("model.text.vocab_size", "259")))
  run = str(tmp_path / "run")
  train.train(cfg, run)
  capsys.readouterr()
  out = str(tmp_path / "x")

  def fails(*argv) -> str:
    assert cli.main(["convert", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not os.path.exists(out), err
    return err

  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--step", "1", "--out", out]) == 0
  assert "from step 1 of" in capsys.readouterr().out
  assert json.load(open(os.path.join(out, "config.json")))["text_config"]["vocab_size"] == 259
  before = sorted(os.listdir(out))
  os.rename(out, str(tmp_path / "done"))
  os.makedirs(out)
  open(os.path.join(out, "notes.txt"), "w").close()
  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--out", out]) == 2
  assert "already exists" in capsys.readouterr().err and os.listdir(out) == ["notes.txt"]
  os.remove(os.path.join(out, "notes.txt"))
  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--out", out]) == 0  # an empty one is used
  assert sorted(os.listdir(out)) == before
  capsys.readouterr()
  os.rename(out, str(tmp_path / "done2"))
  assert "with --to open_clip" not in fails("--to", "open_clip", "--workdir", run, "--out", out)
  assert "--from is not used with --to" in fails("--to", "hf", "--workdir", run, "--from", "hf", "--out", out)
  assert "go together" in fails("--workdir", run, "--out", out)
  assert "no config.json" in fails("--to", "hf", "--workdir", str(tmp_path), "--out", out)
  assert "no checkpoint at step 7" in fails("--to", "hf", "--workdir", run, "--step", "7", "--out", out)
  coca = imported(tmp_path, "open_clip", "openclip_coca.safetensors", "openclip_coca", None)
  assert "has no Hugging Face model class" in fails("--to", "hf", "--workdir", coca, "--out", out)
  clip = str(tmp_path / "clip")
  train.train(config.load(f"{CONFIGS}:name=hf_clip", (("total_steps", "1"), ("batch_size", "8"),
                                                       ("model.text.vocab_size", "259"))), clip)
  capsys.readouterr()
  assert "eos_token_id 2" in fails("--to", "hf", "--workdir", clip, "--out", out)


def test_import_refuses_a_checkpoint_normalised_otherwise_and_export_writes_the_runs_normalisation(tmp_path, capsys):
  """A Hugging Face SigLIP directory whose preprocessor_config.json says mean = std = 0.5: imported with
  data.train.normalize=clip it is a one-line error naming the fix (nothing written); with siglip it imports,
  and its export's preprocessor_config.json has the same mean and std."""
  import re
  import shutil
  from vlmjax.config import ConfigError
  ckpt = tmp_path / "hf_siglip"
  shutil.copytree(os.path.join(FIX, "hf_siglip"), ckpt)
  with open(ckpt / "preprocessor_config.json", "w") as f:
    json.dump({"image_processor_type": "SiglipImageProcessor", "do_normalize": True, "image_mean": [0.5] * 3,
               "image_std": [0.5] * 3}, f)
  tok = word_tokenizer(str(tmp_path / "tok.json"), {0: "<pad>", 1: "</s>"})
  argv = ["convert", "--from", "hf", "--checkpoint", str(ckpt), "--config", f"{CONFIGS}:name=hf_siglip",
          "--tokenizer", f"hf:{tok}", "--out", str(tmp_path / "clip")]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert re.search(r"mean \[0.5, 0.5, 0.5\] .*not data.train.normalize='clip'.*set --config.data.train.normalize=siglip",
                   err) and err.count("\n") == 1 and not (tmp_path / "clip").exists()
  as_file = [str(ckpt / "model.safetensors") if a == str(ckpt) else a for a in argv]  # a file of the directory
  assert cli.main(as_file) == 2 and "set --config.data.train.normalize=siglip" in capsys.readouterr().err
  run = str(tmp_path / "siglip")
  assert cli.main(argv[:-1] + [run, "--config.data.train.normalize=siglip"]) == 0
  from vlmjax import config, train_state  # training from these weights on other pixels: one line
  clip_run = config.load(f"{CONFIGS}:name=hf_siglip", (("init_from", run),))
  with pytest.raises(ConfigError, match=r"normalised as data.train.normalize='siglip', and this run uses 'clip'"):
    train_state.check_init_normalize(clip_run, train_state.init_source(run))
  out = str(tmp_path / "hf")
  assert cli.main(["convert", "--to", "hf", "--workdir", run, "--out", out]) == 0
  pre = json.load(open(os.path.join(out, "preprocessor_config.json")))
  assert pre["image_mean"] == [0.5] * 3 and pre["image_std"] == [0.5] * 3
