"""Golden fixtures for SigLIP 2: HF Siglip2Model (NaFlex) at its native square grid, and a Gemma-style
sentencepiece tokenizer against transformers' GemmaTokenizer / Siglip2Tokenizer.

    /work/torchenv/bin/python scripts/make_golden_siglip2.py   # any venv with torch, transformers,
                                                                # sentencepiece, protobuf (and open_clip,
                                                                # which scripts/make_golden.py imports)
    /work/torchenv/bin/python scripts/make_golden_siglip2.py gemma_tokenizer   # only the named makers

Writes under tests/fixtures/convert/:

  hf_siglip2/ (config.json + model.safetensors), hf_siglip2.npz: a toy Siglip2Model (patch 8, width 64,
      2 layers, 4 heads, MLP 256, vocabulary 100, 12 tokens, num_patches 16: a 4x4 grid, 32 px images),
      every parameter random (scripts/make_golden.py `randomise`). The npz holds `image` [B, 32, 32, 3]
      (NHWC, what vlmjax sees), what the reference was fed, built from those images by transformers'
      Siglip2ImageProcessor (no rescale, no normalisation; its resize at the native size is the
      identity): `pixel_values` [B, 16, 192], `spatial_shapes` [B, 2] (4, 4), `pixel_attention_mask`
      (all ones), `text` [B, 12] (Gemma's ids: eos 1, pad 0; row 0 fills the context, row 1 is padded
      after its eos; the text tower gets no attention mask, as the released processor's tokenizer
      returns none and big_vision's tower has none), and `image_emb`, `text_emb` (L2-normalised),
      `logit_scale` (exp), `logit_bias`. The maker checks that the processor's patches are the image's
      (row, column, channel) flattening and that the per-image position-embedding resize is the
      identity at the native grid.
  gemma_tiny.model, gemma_tiny.npz: a small sentencepiece BPE model with Gemma's special ids (pad 0,
      eos 1, bos 2, unk 3, <mask> 4; byte fallback, split digits, no dummy prefix, identity
      normalisation) trained on TRAIN_TEXT, and for TEXTS at context 16: `ids` from transformers'
      GemmaTokenizer on that .model (add_bos_token=False, add_eos_token=True, padding="max_length",
      truncation) fed the ASCII-lower-cased text (big_vision's `lower`), `siglip2_ids` from
      transformers' Siglip2Tokenizer (Unicode lower-casing) on the raw text; `literal_text` and
      `literal_hf_ids`: control-token text ("<eos>") that transformers turns into special ids.
"""

from __future__ import annotations

import io
import json
import os
import string
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from make_golden import OUT, randomise, state

V, L, IMG, PATCH, W, DEPTH, HEADS, MLP = 100, 12, 32, 8, 64, 2, 4, 256
GRID = IMG // PATCH
EOS, PAD = 1, 0  # Gemma's ids
TOKEN_L = 16
ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def hf_siglip2() -> None:
  from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model
  tower = dict(hidden_size=W, intermediate_size=MLP, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
               hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)  # Siglip2Config's defaults
  config = Siglip2Config(text_config=dict(tower, vocab_size=V, max_position_embeddings=L, pad_token_id=PAD,
                                          eos_token_id=EOS, bos_token_id=2),
                         vision_config=dict(tower, patch_size=PATCH, num_patches=GRID * GRID))
  model = Siglip2Model(config).eval()
  randomise(model, 10)
  g = torch.Generator().manual_seed(11)
  image = torch.randn(2, IMG, IMG, 3, generator=g)  # NHWC, normalised, as vlmjax sees it
  text = torch.randint(5, V, (2, L), generator=g)
  text[0, -1] = EOS
  text[1, 6], text[1, 7:] = EOS, PAD
  processor = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=GRID * GRID, do_resize=True,
                                    do_rescale=False, do_normalize=False)
  fed = processor(images=[x.permute(2, 0, 1).numpy() for x in image], return_tensors="pt")
  patches = image.reshape(2, GRID, PATCH, GRID, PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(2, GRID * GRID, -1)
  assert torch.equal(fed["pixel_values"], patches), "the processor's patches are not (row, column, channel)"
  assert (fed["spatial_shapes"] == GRID).all() and (fed["pixel_attention_mask"] == 1).all()
  with torch.no_grad():
    table = model.vision_model.embeddings.position_embedding.weight
    resized = model.vision_model.embeddings.resize_positional_embeddings(
        table.reshape(GRID, GRID, -1), fed["spatial_shapes"], GRID * GRID)
    drift = float((resized - table[None]).abs().max())
  assert drift == 0.0, f"the position-embedding resize at the native grid moved values by {drift}"
  with torch.no_grad():
    out = model(input_ids=text, pixel_values=fed["pixel_values"], spatial_shapes=fed["spatial_shapes"],
                pixel_attention_mask=fed["pixel_attention_mask"])
  os.makedirs(os.path.join(OUT, "hf_siglip2"), exist_ok=True)
  save_file(state(model), os.path.join(OUT, "hf_siglip2", "model.safetensors"))
  with open(os.path.join(OUT, "hf_siglip2", "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  arrays = dict(image=image.numpy(), text=text.numpy().astype(np.int32), image_emb=out.image_embeds,
                text_emb=out.text_embeds, logit_scale=model.logit_scale.exp(), logit_bias=model.logit_bias,
                **{k: v for k, v in fed.items()})
  np.savez_compressed(os.path.join(OUT, "hf_siglip2.npz"),
                      **{k: v.detach().numpy() if torch.is_tensor(v) else v for k, v in arrays.items()})
  print(f"  position-embedding resize at the native grid: max |change| {drift}")


# Training text for the tiny tokenizer: a few scripts, digits, runs of whitespace.
TRAIN_TEXT = [
    "a photo of a cat", "a photo of a dog", "the dog and the cat", "two dogs playing in the snow",
    "a painting of a lighthouse at night", "a close-up photo of a red apple on a wooden table",
    "une photo d'un chat noir", "ein Foto von einem kleinen Hund", "una foto de un perro en la playa",
    "東京の夜景の写真", "猫の写真", "фото кошки на диване", "صورة قطة", "ένα μήλο στο τραπέζι",
    "12345 apples and 678 pears", "  double  spaces\tand tabs\nand newlines  ",
    "café naïve résumé über straße", "emoji 🐱 and 🐶", "<mask> marks a masked word"]
# Texts for the golden ids: ASCII capitals, non-ASCII capitals (where lower-casings differ), scripts
# the model barely knows (byte fallback), whitespace runs, digits, the user-defined <mask>, the empty
# text, and three lengths around the context (filled exactly, one over, far over: truncated, eos kept).
TEXTS = [
    "a photo of a cat", "A Photo Of A CAT!", "the dog, the cat and 2024 apples", "  leading,  double  spaces  ",
    "tab\tand\nnewline", "東京の夜景 and 猫", "ünïcödé café naïve", "emoji 🐱👍🏽 ok", "<mask> word",
    "", "ΟΔΥΣΣΕΥΣ in İSTANBUL", "ÉCOLE Straße ÆON", "A Very Long Caption About Dogs " * 6]
LITERAL_TEXT = "the <eos> and <pad> tags"


def _train_tokenizer(path: str) -> None:
  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(TRAIN_TEXT * 10), model_writer=buf, model_type="bpe", vocab_size=400,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
      unk_piece="<unk>", user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True,
      add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
      allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
      minloglevel=2)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def _around_context(sp) -> list[str]:
  """Texts of exactly TOKEN_L - 1 (eos last, no padding) and TOKEN_L pieces (one truncated)."""
  out = []
  for want in (TOKEN_L - 1, TOKEN_L):
    text = next((t for n in range(1, 40) if len(sp.encode(t := " ".join(["dog"] * n))) == want), None)
    if text is None:
      text = next(t for n in range(1, 40) if len(sp.encode(t := "cat " * n)) == want)
    out.append(text)
  return out


def gemma_tokenizer() -> None:
  import shutil
  import tempfile
  import sentencepiece as spm
  from transformers import GemmaTokenizer, Siglip2Tokenizer
  path = os.path.join(OUT, "gemma_tiny.model")
  _train_tokenizer(path)
  sp = spm.SentencePieceProcessor(model_file=path)
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id(), sp.id_to_piece(4)) == (0, 1, 2, 3, "<mask>")
  texts = TEXTS + _around_context(sp)
  kw = dict(add_bos_token=False, add_eos_token=True, padding_side="right")
  with tempfile.TemporaryDirectory() as tmp:
    shutil.copyfile(path, os.path.join(tmp, "tokenizer.model"))  # transformers converts the .model itself
    gemma, siglip2 = GemmaTokenizer.from_pretrained(tmp, **kw), Siglip2Tokenizer.from_pretrained(tmp, **kw)
  assert (gemma.pad_token_id, gemma.eos_token_id, gemma.bos_token_id) == (PAD, EOS, 2)
  call = dict(padding="max_length", max_length=TOKEN_L, truncation=True)
  ids = [gemma(t.translate(ASCII_LOWER), **call)["input_ids"] for t in texts]
  siglip2_ids = [siglip2(t, **call)["input_ids"] for t in texts]
  literal = gemma(LITERAL_TEXT, **call)["input_ids"]
  assert literal.count(EOS) == 2 and PAD in literal[:-1], literal  # "<eos>" became id 1, "<pad>" id 0
  np.savez_compressed(os.path.join(OUT, "gemma_tiny.npz"), texts=np.array(texts), ids=np.array(ids, np.int32),
                      siglip2_ids=np.array(siglip2_ids, np.int32), literal_text=np.array(LITERAL_TEXT),
                      literal_hf_ids=np.array(literal, np.int32))
  print(f"  {os.path.getsize(path)} bytes; {len(texts)} texts at context {TOKEN_L}")


def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  torch.manual_seed(0)
  makers = (hf_siglip2, gemma_tokenizer)
  names = sys.argv[1:] or [m.__name__ for m in makers]
  unknown = set(names) - {m.__name__ for m in makers}
  if unknown:
    raise SystemExit(f"unknown fixture(s) {sorted(unknown)}; valid: {', '.join(m.__name__ for m in makers)}")
  for make in makers:
    if make.__name__ in names:
      make()
      print(f"wrote {make.__name__}")


if __name__ == "__main__":
  main()
