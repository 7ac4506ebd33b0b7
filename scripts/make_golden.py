"""Golden fixtures for `vlmjax.convert`: tiny reference models with random weights, their outputs.

    /work/torchenv/bin/python scripts/make_golden.py   # any venv with torch, open_clip_torch, transformers

    /work/torchenv/bin/python scripts/make_golden.py openclip_siglip   # only the named makers

Builds open_clip CLIP, open_clip CoCa, open_clip ViT-B-16-SigLIP (timm image tower), HF
CLIPModel and HF SiglipModel at toy sizes
(width 64, 2 layers, 4 heads, image 32, patch 8, vocabulary 100, 12 tokens), gives
every parameter random values (norms and biases too, so a mis-mapped tensor shows),
and writes under tests/fixtures/convert/:

  NAME.safetensors (open_clip) or NAME/model.safetensors + config.json (HF): the weights
  NAME.npz: `image` [B, H, W, 3] (NHWC, as vlmjax takes it), `text` [B, L] int32 (0 = pad),
            `image_emb`, `text_emb` (L2-normalised), `logit_scale` (exp), CoCa `logits`, all run
            with the settings released checkpoints use: quick_gelu (OpenAI CLIP, HF CLIPModel),
            tanh gelu + LayerNorm eps 1e-6 (SigLIP), the legacy CLS mask (open_clip CoCa);
            `gelu_*` (open_clip CLIP): the same weights with exact gelu, as LAION-trained models;
            `correct_*` (open_clip CoCa): with `correct_cls_mask=True`.
  openclip_coca_lengths.npz: the openclip_coca weights on 11 captions, one of every length (EOS at
            position 1 .. 11, padded with 0 after it).
            open_clip's ViT-B-16-SigLIP (MLP ratio 2, weights stored as float16, to stay small) runs as released: exact gelu in both towers (timm's and
            open_clip's default), LayerNorm eps 1e-6, text padded with id 1 (its tokenizer's
            pad = eos), which the last-token pooling reads as it is.
  openclip_siglip_b16_shapes.json: name -> shape of every tensor of the full-size open_clip
            ViT-B-16-SigLIP state dict (built on the meta device; no download).
  bpe_tiny.txt.gz / bpe_tiny.npz: a made-up merges file in open_clip's BPE format and the
            ids open_clip's SimpleTokenizer gives a few texts with it (context 16).
  openclip_clean.npz: the ids open_clip's SimpleTokenizer gives web-style captions (CLEAN_TEXTS: entities,
            curly quotes, ligatures, fullwidth, mojibake, control characters, Greek final sigma, ...)
            with the same merges file (context 24): its text cleaning, which vlmjax's `open_clip:`
            tokenizer reproduces.

Other references have their own makers beside this one: scripts/make_golden_siglip2.py (HF Siglip2Model,
the Gemma tokenizer), make_golden_big_vision.py (big_vision's SigLIP .npz), make_param_counts.py
(full-size reference parameter counts), make_golden_clip_benchmark.py (`clip_benchmark eval` figures),
make_prompts.py (the papers' class names and templates), check_export.py (exports loaded in
transformers / open_clip).

Text rows: row 0 fills the context (no padding); row 1 is padded with 0 after its EOS.
EOS is the largest id (open_clip CLIP pools at the argmax id).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "convert")
V, L, IMG, PATCH, W, DEPTH, HEADS = 100, 12, 32, 8, 64, 2, 4
SOT, EOS = V - 2, V - 1


def randomise(model: torch.nn.Module, seed: int) -> None:
  """Every float parameter gets fresh random values: norm scales near 1, biases and tokens ~0.1,
  matrices with unit-variance outputs."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if name.endswith("logit_scale"):
        p.copy_(torch.full_like(p, 2.3))
      elif name.endswith("logit_bias"):
        p.copy_(torch.full_like(p, -3.0))
      elif p.ndim == 1 and torch.all(p == 1):  # a norm scale
        p.copy_(1 + 0.1 * noise)
      elif torch.all(p == 0) or p.ndim == 1:  # biases, zero-initialised tokens
        p.copy_(0.1 * noise)
      else:  # independent of the init, which leaves some tensors uninitialised (torch.empty)
        p.copy_(noise / float(np.prod(p.shape[1:])) ** 0.5)


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
  g = torch.Generator().manual_seed(seed)
  image = torch.randn(2, 3, IMG, IMG, generator=g)
  text = torch.randint(1, SOT, (2, L), generator=g)
  text[:, 0] = SOT
  text[0, -1] = EOS
  text[1, 6], text[1, 7:] = EOS, 0
  return image, text


def save_npz(name: str, image, text, **outs) -> None:
  arrays = {"image": image.permute(0, 2, 3, 1).numpy(), "text": text.numpy().astype(np.int32)}
  arrays.update({k: v.detach().numpy().astype(np.float32) for k, v in outs.items()})
  np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **arrays)


def state(model: torch.nn.Module) -> dict:
  return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def openclip_clip() -> None:
  cfg = dict(embed_dim=32,
             vision_cfg=dict(image_size=IMG, patch_size=PATCH, width=W, layers=DEPTH, head_width=W // HEADS),
             text_cfg=dict(context_length=L, vocab_size=V, width=W, heads=HEADS, layers=DEPTH))
  laion = open_clip.CLIP(**cfg).eval()  # exact gelu, as LAION-trained models
  randomise(laion, 0)
  model = open_clip.CLIP(**cfg, quick_gelu=True).eval()  # OpenAI-pretrained weights
  model.load_state_dict(laion.state_dict())
  image, text = inputs(1)
  with torch.no_grad():
    out, gelu = model(image, text), laion(image, text)
  save_file(state(model), os.path.join(OUT, "openclip_clip.safetensors"))
  save_npz("openclip_clip", image, text, image_emb=out[0], text_emb=out[1], logit_scale=out[2],
           gelu_image_emb=gelu[0], gelu_text_emb=gelu[1])


def coca_cfg() -> dict:
  return dict(embed_dim=W,
             vision_cfg=dict(image_size=IMG, patch_size=PATCH, width=48, layers=DEPTH, head_width=16,
                             attentional_pool=True, attn_pooler_queries=9, attn_pooler_heads=HEADS,
                             output_tokens=True),
             text_cfg=dict(context_length=L, vocab_size=V, width=W, heads=HEADS, layers=DEPTH, embed_cls=True,
                           output_tokens=True),
             multimodal_cfg=dict(context_length=L, vocab_size=V, width=W, heads=HEADS, layers=DEPTH,
                                 attn_pooler_heads=HEADS))


def openclip_coca() -> None:
  model = open_clip.CoCa(**coca_cfg()).eval()
  randomise(model, 2)
  image, text = inputs(3)
  assert not model.text.correct_cls_mask  # released CoCa weights: CLS mask shifted by one position
  with torch.no_grad():
    out = model(image, text)
    model.text.correct_cls_mask = True
    correct = model(image, text)
  save_file(state(model), os.path.join(OUT, "openclip_coca.safetensors"))
  save_npz("openclip_coca", image, text, image_emb=out["image_features"], text_emb=out["text_features"],
           logit_scale=out["logit_scale"], logits=out["logits"], correct_text_emb=correct["text_features"],
           correct_logits=correct["logits"])


def openclip_coca_lengths() -> None:
  """The committed openclip_coca weights on captions of every length (EOS at position 1 .. L-1)."""
  from safetensors.torch import load_file
  model = open_clip.CoCa(**coca_cfg()).eval()
  model.load_state_dict(load_file(os.path.join(OUT, "openclip_coca.safetensors")))
  g = torch.Generator().manual_seed(4)
  image = torch.randn(L - 1, 3, IMG, IMG, generator=g)
  text = torch.randint(1, SOT, (L - 1, L), generator=g)
  text[:, 0] = SOT
  for row, eos in enumerate(range(1, L)):
    text[row, eos], text[row, eos + 1:] = EOS, 0
  with torch.no_grad():
    out = model(image, text)
  save_npz("openclip_coca_lengths", image, text, image_emb=out["image_features"], text_emb=out["text_features"],
           logits=out["logits"])


SIGLIP = "ViT-B-16-SigLIP"


def openclip_siglip() -> None:
  """open_clip's ViT-B-16-SigLIP model config with toy sizes: the text tower through its config,
  the timm trunk through the same `timm.create_model` call with size overrides (open_clip passes none)."""
  import timm
  cfg = open_clip.get_model_config(SIGLIP)
  cfg.pop("custom_text")
  cfg["embed_dim"] = W  # proj "none": the MAP head's output is the embedding
  cfg["vision_cfg"]["image_size"] = IMG
  cfg["text_cfg"].update(context_length=L, vocab_size=V, width=W, heads=HEADS, layers=DEPTH, mlp_ratio=2.0)
  cfg["text_cfg"].pop("hf_tokenizer_name"), cfg["text_cfg"].pop("tokenizer_kwargs")
  create = timm.create_model
  tiny = dict(img_size=IMG, patch_size=PATCH, embed_dim=W, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.0)
  open_clip.timm_model.timm.create_model = functools.partial(create, **tiny)
  try:
    model = open_clip.CustomTextCLIP(**cfg).eval()
  finally:
    open_clip.timm_model.timm.create_model = create
  assert type(model.visual.trunk.attn_pool).__name__ == "AttentionPoolLatent" and model.text.pool_type == "last"
  randomise(model, 8)
  with torch.no_grad():  # stored as float16 (a small fixture): run the reference on exactly those values
    for p in model.parameters():
      p.copy_(p.half().float())
  g = torch.Generator().manual_seed(9)
  image = torch.randn(2, 3, IMG, IMG, generator=g)
  text = torch.randint(2, V, (2, L), generator=g)  # sentencepiece ids; 1 = eos = pad (open_clip's SigLIP tokenizer)
  text[0, -1] = 1
  text[1, 6:] = 1
  with torch.no_grad():
    out = model(image, text)
  save_file({k: v.half() for k, v in state(model).items()}, os.path.join(OUT, "openclip_siglip.safetensors"))
  image_emb, text_emb, logit_scale, logit_bias = out  # logit_scale comes exponentiated
  save_npz("openclip_siglip", image, text, image_emb=image_emb, text_emb=text_emb, logit_scale=logit_scale,
           logit_bias=logit_bias)
  cfg = open_clip.get_model_config(SIGLIP)
  cfg.pop("custom_text")
  with torch.device("meta"):
    full = open_clip.CustomTextCLIP(**cfg)
  shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
  with open(os.path.join(OUT, "openclip_siglip_b16_shapes.json"), "w") as f:
    json.dump(dict(model=SIGLIP, open_clip=open_clip.__version__, shapes=shapes), f, indent=0)
    f.write("\n")


def save_hf(name: str, model, config) -> None:
  os.makedirs(os.path.join(OUT, name), exist_ok=True)
  save_file(state(model), os.path.join(OUT, name, "model.safetensors"))
  with open(os.path.join(OUT, name, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)


def hf_clip() -> None:
  def config(act):
    tower = dict(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                 hidden_act=act)
    return CLIPConfig(text_config=dict(tower, vocab_size=V, max_position_embeddings=L, eos_token_id=EOS,
                                       bos_token_id=SOT, pad_token_id=0),
                      vision_config=dict(tower, image_size=IMG, patch_size=PATCH), projection_dim=32)
  model = CLIPModel(config("quick_gelu")).eval()  # CLIPConfig's default, as OpenAI's weights
  randomise(model, 4)
  image, text = inputs(5)
  with torch.no_grad():
    out = model(input_ids=text, pixel_values=image)
  save_hf("hf_clip", model, config("quick_gelu"))
  save_npz("hf_clip", image, text, image_emb=out.image_embeds, text_emb=out.text_embeds,
           logit_scale=model.logit_scale.exp())


def hf_siglip() -> None:
  def config(act, eps):
    tower = dict(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                 hidden_act=act, layer_norm_eps=eps)
    return SiglipConfig(text_config=dict(tower, vocab_size=V, max_position_embeddings=L, bos_token_id=SOT,
                                         eos_token_id=EOS, pad_token_id=0),
                        vision_config=dict(tower, image_size=IMG, patch_size=PATCH))
  model = SiglipModel(config("gelu_pytorch_tanh", 1e-6)).eval()  # SiglipConfig's defaults
  randomise(model, 6)
  image, text = inputs(7)
  with torch.no_grad():
    out = model(input_ids=text, pixel_values=image)
  save_hf("hf_siglip", model, config("gelu_pytorch_tanh", 1e-6))
  save_npz("hf_siglip", image, text, image_emb=out.image_embeds, text_emb=out.text_embeds,
           logit_scale=model.logit_scale.exp(), logit_bias=model.logit_bias)


MERGES = ["p h", "ph o", "t o</w>", "pho to</w>", "o f</w>", "c a", "ca t</w>", "d o", "do g</w>", "a n",
          "an d</w>", "t h", "th e</w>", "i t", "' s</w>", "l i", "li f", "lif e</w>", "1 2", "12 3</w>"]
TEXTS = ["A photo of a CAT!", "the dog  and\tthe cat", "it's a dog's life", "\u00fcn\u00efcode text 123"]


def openclip_bpe() -> None:
  """A made-up merges file in open_clip's format, and what open_clip's tokenizer makes of TEXTS with it."""
  import gzip
  from open_clip.tokenizer import SimpleTokenizer
  path = os.path.join(OUT, "bpe_tiny.txt.gz")
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("#version: tiny\n" + "\n".join(MERGES))  # no trailing newline: open_clip would read an empty merge
  tok = SimpleTokenizer(bpe_path=path)
  ids = tok(TEXTS, context_length=16).numpy().astype(np.int32)
  np.savez_compressed(os.path.join(OUT, "bpe_tiny.npz"), ids=ids, texts=np.array(TEXTS))


# Web captions as they come: HTML entities (double-escaped too), curly quotes, ligatures, fullwidth, mojibake,
# control characters, a byte-order mark, mixed scripts and emoji, Greek final sigma, runs of odd whitespace,
# and text longer than the context (truncated with the end-of-text id kept).
CLEAN_TEXTS = [
    "Tom &amp; Jerry&#39;s &quot;house&quot;", "rock &amp;amp; roll", "don\u2019t \u201cquote\u201d me",
    "the \ufb01ne \ufb02ower", "\uff21\uff22\uff23 \uff11\uff12\uff13 fullwidth", "caf\u00c3\u00a9 mojibake",
    "tab\there\x00nul\x07bell\x1b[31mred", "\ufeffbyte order mark", "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3",
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u03ba\u03b1\u03b9 \u03a3\u03bf\u03c6\u03af\u03b1\u03a3",
    "\u65e5\u672c\u8a9e \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 mixed",
    "emoji \U0001F600\U0001F44D\U0001F3FD ok", "  lots \u00a0 of\u2003\u2029spaces\n\n ",
    "e\u0301 combining, \u212b angstrom", "A PHOTO of the Cat " * 12, ""]


def openclip_clean() -> None:
  """open_clip's SimpleTokenizer (default `lower` cleaning) on CLEAN_TEXTS, with the tiny merges file."""
  from open_clip.tokenizer import SimpleTokenizer
  tok = SimpleTokenizer(bpe_path=os.path.join(OUT, "bpe_tiny.txt.gz"))
  ids = tok(CLEAN_TEXTS, context_length=24).numpy().astype(np.int32)
  np.savez_compressed(os.path.join(OUT, "openclip_clean.npz"), ids=ids, texts=np.array(CLEAN_TEXTS))


def main() -> None:
  os.makedirs(OUT, exist_ok=True)
  torch.manual_seed(0)
  makers = (openclip_clip, openclip_coca, openclip_coca_lengths, openclip_siglip, hf_clip, hf_siglip, openclip_bpe, openclip_clean)
  names = sys.argv[1:] or [m.__name__ for m in makers]
  unknown = set(names) - {m.__name__ for m in makers}
  if unknown:
    raise SystemExit(f"unknown fixture(s) {sorted(unknown)}; valid: {', '.join(m.__name__ for m in makers)}")
  for make in makers:
    if make.__name__ not in names:
      continue
    make()
    print(f"wrote {make.__name__}")


if __name__ == "__main__":
  main()
