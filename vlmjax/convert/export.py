"""`vlmjax convert --to open_clip|hf --workdir RUN [--step N] --out DIR`: a run as the other library's model.

    --to hf         DIR/config.json, model.safetensors, tokenizer files, preprocessor_config.json:
                    `transformers.CLIPModel` / `SiglipModel.from_pretrained(DIR)`
    --to open_clip  DIR/open_clip_config.json, open_clip_model.safetensors (+ tokenizer.json):
                    `open_clip.create_model("local-dir:DIR")` (strict load)

RUN is a training workdir (config.json, checkpoints/; the latest step unless --step) or a `vlmjax
convert` output. The reference's config is written from the run's model config; a knob the target
cannot express (a pooling, a layout) is a one-line ConfigError naming it, checked before anything is
read. The directory appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from vlmjax.errors import ConfigError

TARGETS = ("open_clip", "hf")
HF_ACT = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_tanh": "gelu_pytorch_tanh"}
VIT_CLS = {"vision.kind": "vit", "vision.posemb": "learn", "vision.cls_token": True, "vision.ln_pre": True,
           "vision.patch_bias": False}
CLIP_LAYOUT = {**VIT_CLS, "vision.pool": "cls", "vision.final_norm": True, "image_proj": "linear",
               "text_proj": "linear", "text.kind": "transformer", "text.causal": True, "text.pool": "eos",
               "text.mask_pad": True, "text.norm_tokens": True, "init_logit_bias": None}
SIGLIP_LAYOUT = {"vision.kind": "vit", "vision.posemb": "learn", "vision.cls_token": False, "vision.ln_pre": False,
                 "vision.patch_bias": True, "vision.pool": "map", "vision.final_norm": True, "image_proj": "none",
                 "text_proj": "linear_bias", "text.kind": "transformer", "text.causal": False, "text.pool": "last",
                 "text.mask_pad": False, "text.norm_tokens": True}  # SiglipModel attends to padding
SIGLIP2_LAYOUT = {**{k: v for k, v in SIGLIP_LAYOUT.items() if not k.startswith("vision.")},
                  "vision.kind": "naflex", "vision.pool": "map"}  # Siglip2Model: SiglipModel's towers, NaFlex's image
COCA_LAYOUT = {**VIT_CLS, "vision.pool": "none", "vision.final_norm": False, "text.kind": "transformer",
               "text.causal": True, "text.pool": "cls", "text.mask_pad": True, "text.norm_tokens": False,
               "text.cls_mask": "legacy", "pooler.kind": "open_clip", "pooler.mode": "single",
               "decoder.layout": "open_clip", "decoder.tie_embedding": False}


def abstract_params(cfg):
  from flax import nnx
  from vlmjax import models
  return nnx.to_pure_dict(nnx.split(models.abstract(cfg.model))[1])


def run_offset(cfg) -> int:
  """The pad rows a run's tokenizer added (its ids shifted up so 0 is padding): 0 for `bytes`."""
  from vlmjax.data import tokenizers
  spec = cfg.data.train.tokenizer
  try:
    return tokenizers.build(spec).shift if spec != "bytes" else 0
  except ConfigError as e:
    raise ConfigError(f"cannot tell the run's vocabulary offset from its tokenizer ({e}); pass --vocab-offset "
                      "0 or 1 (1 drops a pad row at id 0)") from None


def load_config(path: str, overrides):
  """A resolved config.json (a run's or a `vlmjax convert` output's)."""
  from vlmjax.evals import commands as eval_commands
  return eval_commands.load_config_file(path, overrides)


def _get(m, path: str):
  for part in path.split("."):
    m = m.get(part) if hasattr(m, "get") else None
  return m


def layout(to: str, m) -> tuple[str, dict]:
  """(reference family, the layout knobs it fixes) for exporting model config `m` to `to`."""
  siglip = m.name == "two_tower" and _get(m, "vision.pool") == "map"
  if m.name == "two_tower" and _get(m, "vision.kind") == "naflex":
    if to != "hf":
      raise ConfigError("a NaFlex model (model.vision.kind=naflex) exports to transformers' Siglip2Model only; "
                        "export it with --to hf")
    return "hf_siglip2", SIGLIP2_LAYOUT
  if m.name == "coca":
    if to == "hf":
      raise ConfigError("model.name='coca' has no Hugging Face model class; export it with --to open_clip")
    return "open_clip", COCA_LAYOUT
  if m.name != "two_tower":
    raise ConfigError(f"model.name={m.name!r} cannot be exported: open_clip and Hugging Face have two_tower "
                      "(CLIP, SigLIP) and open_clip has coca")
  if siglip:
    if to == "open_clip":
      raise ConfigError("a SigLIP model (model.vision.pool='map') exports to open_clip only as a timm tower of a "
                        "named size; export it with --to hf (transformers' SiglipModel)")
    return "hf_siglip", SIGLIP_LAYOUT
  return ("hf_clip" if to == "hf" else "open_clip"), CLIP_LAYOUT


def check(to: str, m) -> str:
  """The reference family, after checking every knob the target fixes (one line for the first that
  differs) and the sizes it derives (heads, MLP ratios)."""
  family, knobs = layout(to, m)
  for path, want in knobs.items():
    if _get(m, path) != want:
      raise ConfigError(f"model.{path}={_get(m, path)!r} cannot be exported to {to} as {family} (it needs "
                        f"{want!r})")
  if m.act not in HF_ACT:
    raise ConfigError(f"model.act={m.act!r} cannot be exported; valid: {', '.join(HF_ACT)}")
  for tower in ("vision", "text"):
    t = m[tower]
    if t.width % t.heads:
      raise ConfigError(f"model.{tower}.width={t.width} is not a multiple of its heads={t.heads}")
  if family in ("hf_siglip", "hf_siglip2") and m.embed_dim != m.vision.width:
    raise ConfigError(f"model.embed_dim={m.embed_dim} must equal model.vision.width={m.vision.width} for "
                      "SiglipModel (the MAP head's output is the image embedding)")
  if m.name == "coca" and m.pooler.width != m.embed_dim:
    raise ConfigError(f"model.pooler.width={m.pooler.width} must equal model.embed_dim={m.embed_dim} for "
                      "open_clip's CoCa (its attentional pooler outputs embed_dim)")
  return family


def mapped(family: str, cfg, abstract) -> None:
  """A one-line ConfigError for the first parameter that `family`'s names have no place for."""
  from vlmjax.convert import mapping, params as conv
  try:
    rules = mapping.rules(family, cfg.model.name)
  except KeyError as e:
    raise ConfigError(str(e.args[0])) from None
  for key in conv.unroll(conv.flatten(abstract)):
    try:
      mapping.match(rules, key)
    except KeyError:
      raise ConfigError(f"parameter {key} of this model has no place in {family} checkpoints: this layout "
                        f"(model.name={cfg.model.name!r}) cannot be exported") from None


def tokenizer_info(spec: str, offset: int) -> dict:
  """The run's tokenizer in reference ids: its file and special tokens (`bytes`: ids only)."""
  from vlmjax.data import tokenizers
  tok = tokenizers.build(spec)
  if spec == "bytes":
    return dict(kind="bytes", path=None, bos=None, eos=None, bos_id=tok.bos, eos_id=tok.eos)
  kind, _, path = spec.partition(":")
  def name(i: int) -> str:
    return tok._tok.id_to_token(i - offset) if hasattr(tok, "_tok") else tok._sp.id_to_piece(i - offset)
  return dict(kind=kind, path=path, bos=tok.bos and name(tok.bos), eos=tok.eos and name(tok.eos),
              bos_id=tok.bos and tok.bos - offset, eos_id=tok.eos and tok.eos - offset)


def hf_config(family: str, m, offset: int, tok: dict) -> dict:
  def tower(t, **extra):
    return dict(hidden_size=t.width, intermediate_size=t.mlp_dim, num_hidden_layers=t.depth,
                num_attention_heads=t.heads, hidden_act=HF_ACT[m.act], layer_norm_eps=m.norm_eps, **extra)
  pad = max(m.text.pad_id - offset, 0)
  ids = dict(pad_token_id=pad, bos_token_id=tok["bos_id"], eos_token_id=tok["eos_id"])
  vision = (tower(m.vision, num_patches=m.vision.num_patches, patch_size=m.vision.patch_size, num_channels=3)
            if family == "hf_siglip2" else
            tower(m.vision, image_size=m.image_size, patch_size=m.vision.patch_size, num_channels=3))
  text = tower(m.text, vocab_size=m.text.vocab_size - offset, max_position_embeddings=m.text.context_length, **ids)
  if family == "hf_clip":
    vision["projection_dim"] = text["projection_dim"] = m.embed_dim
    return dict(architectures=["CLIPModel"], model_type="clip", projection_dim=m.embed_dim,
                logit_scale_init_value=float(np.log(m.init_logit_scale)), text_config=text, vision_config=vision)
  text["projection_size"] = m.embed_dim
  if family == "hf_siglip2":
    return dict(architectures=["Siglip2Model"], model_type="siglip2", text_config=text, vision_config=vision)
  return dict(architectures=["SiglipModel"], model_type="siglip", text_config=text, vision_config=vision)


def open_clip_config(m, offset: int, tok: dict, normalize: str = "clip") -> dict:
  def ratio(t):
    return t.mlp_dim / t.width
  v, t = m.vision, m.text
  vision = dict(image_size=m.image_size, layers=v.depth, width=v.width, head_width=v.width // v.heads,
                mlp_ratio=ratio(v), patch_size=v.patch_size)
  vocab = t.vocab_size - offset
  text = dict(context_length=t.context_length, vocab_size=vocab, width=t.width, heads=t.heads, layers=t.depth,
              mlp_ratio=ratio(t))
  for c in (vision, text):
    if m.norm_eps != 1e-5:
      c["norm_kwargs"] = {"eps": m.norm_eps}
    if m.act == "gelu_tanh":
      c["act_kwargs"] = {"approximate": "tanh"}
  eos = tok["eos_id"]
  if m.name == "two_tower" and eos is not None and eos != vocab - 1:  # open_clip pools at the largest id by default
    text.update(pool_type="eos", eos_id=eos)
  cfg = dict(embed_dim=m.embed_dim, quick_gelu=m.act == "quick_gelu", vision_cfg=vision, text_cfg=text)
  if m.name == "coca":
    vision.update(attentional_pool=True, attn_pooler_queries=m.pooler.n_queries, attn_pooler_heads=m.pooler.heads,
                  output_tokens=True)
    text.update(embed_cls=True, output_tokens=True)
    d = m.decoder
    cfg.update(custom_text=True, multimodal_cfg=dict(
        context_length=t.context_length, vocab_size=vocab, width=t.width, heads=d.heads, layers=d.depth,
        mlp_ratio=d.mlp_dim / t.width, attn_pooler_heads=m.pooler.heads))
  if tok["kind"] in ("hf", "gemma"):
    text["hf_tokenizer_name"] = "local-dir"  # open_clip then reads the tokenizer files from the directory
  return dict(model_cfg=cfg, preprocess_cfg=_preprocess(m, normalize))


def _preprocess(m, normalize: str = "clip") -> dict:
  """The image preprocessing the exported weights expect: the run's size and `data.train.normalize`."""
  from vlmjax.data import transforms
  mean, std = transforms.mean_std(normalize)
  return dict(size=m.image_size, mean=mean, std=std, interpolation="bicubic", resize_mode="shortest")


def write_tokenizer(tok: dict, out: str, to: str, context: int, pad_id: int) -> list[str]:
  """The tokenizer files `to` loads: tokenizer.json with a post-processor adding bos/eos (vlmjax adds them
  itself), tokenizer_config.json and special_tokens_map.json; a sentencepiece model as spiece.model."""
  if tok["kind"] == "bytes":
    return []
  if tok["kind"] in ("sentencepiece", "gemma"):
    return _write_sentencepiece(tok, out, context, pad_id)
  from tokenizers import Tokenizer, processors
  t = Tokenizer.from_file(tok["path"])
  pieces = [p for p in ("bos", "eos") if tok[p] is not None]
  if pieces:
    template = ([tok["bos"]] if tok["bos"] else []) + ["$A"] + ([tok["eos"]] if tok["eos"] else [])
    t.post_processor = processors.TemplateProcessing(single=" ".join(template),
                                                     special_tokens=[(tok[p], tok[f"{p}_id"]) for p in pieces])
  t.save(os.path.join(out, "tokenizer.json"))
  special = {f"{p}_token": tok[p] for p in pieces}
  special["pad_token"] = t.id_to_token(pad_id)
  with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
    json.dump(special, f, indent=1)
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=context, padding_side="right",
                   **special), f, indent=1)
  return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def _write_sentencepiece(tok: dict, out: str, context: int, pad_id: int) -> list[str]:
  """A sentencepiece model as transformers loads it: Gemma's (`gemma:`, SigLIP 2) as GemmaTokenizer without
  bos and with eos, as vlmjax encodes; another as the model file alone (SiglipTokenizer's spiece.model)."""
  import sentencepiece as spm
  if tok["kind"] == "sentencepiece":
    shutil.copyfile(tok["path"], os.path.join(out, "spiece.model"))
    return ["spiece.model"]
  shutil.copyfile(tok["path"], os.path.join(out, "tokenizer.model"))
  sp = spm.SentencePieceProcessor(model_file=tok["path"])
  special = dict(eos_token=tok["eos"], pad_token=sp.id_to_piece(pad_id), unk_token=sp.id_to_piece(sp.unk_id()))
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(dict(tokenizer_class="GemmaTokenizer", add_bos_token=False, add_eos_token=True,
                   model_max_length=context, padding_side="right", **special), f, indent=1)
  return ["tokenizer.model", "tokenizer_config.json"]


def export(to: str, workdir: str, step: int | None, out: str) -> str:
  """Writes the run's step as `to`'s model directory at `out`; returns a one-line summary."""
  import jax
  from vlmjax import train_state
  from vlmjax.convert import io, params as conv
  if to not in TARGETS:
    raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
  io.check_new_dir(out)
  cfg = _run_config(workdir)
  family = check(to, cfg.model)
  mapped(family, cfg, abstract_params(cfg))
  offset = run_offset(cfg)
  tok = tokenizer_info(cfg.data.train.tokenizer, offset)
  if family == "hf_clip" and tok["eos_id"] == 2:
    raise ConfigError(f"the run's tokenizer {cfg.data.train.tokenizer!r} ends text with id 2, and transformers' "
                      "CLIPModel reads eos_token_id 2 as 'pool at the largest id' (its legacy mode), not at EOS: "
                      "export to open_clip, or train with an hf:/open_clip: tokenizer")
  _, ours, step = train_state.restore_params(workdir, cfg, step)
  state = conv.to_ref(jax.device_get(ours), family, cfg.model, vocab_offset=offset)
  with io.staged_dir(out) as tmp:
    m = cfg.model
    weights = "model.safetensors" if to == "hf" else "open_clip_model.safetensors"
    io.write_safetensors({k: np.asarray(v, np.float32) for k, v in state.items()}, os.path.join(tmp, weights))
    meta = (hf_config(family, m, offset, tok) if to == "hf"
            else open_clip_config(m, offset, tok, cfg.data.train.normalize))
    with open(os.path.join(tmp, "config.json" if to == "hf" else "open_clip_config.json"), "w") as f:
      json.dump(meta, f, indent=1)
    files = write_tokenizer(tok, tmp, to, m.text.context_length, max(m.text.pad_id - offset, 0))
    if to == "hf":
      _write_preprocessor(family, m, tmp, cfg.data.train.normalize, cfg.data.train.max_patches)
  toks = f", tokenizer {'+'.join(files)}" if files else ", no tokenizer (the run's is `bytes`)"
  return f"wrote {out} ({to}: {family}, {len(state)} tensors{toks}) from step {step} of {workdir}"


def _run_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"--workdir {workdir!r} has no config.json: give a training run's workdir or a "
                      "`vlmjax convert` output")
  return load_config(path, ())


def _write_preprocessor(family: str, m, out: str, normalize: str = "clip", max_patches: int = 0) -> None:
  pre = _preprocess(m, normalize)
  if family == "hf_siglip2":  # each image at its aspect ratio within the run's patch budget, as vlmjax reads it
    cfg = dict(image_processor_type="Siglip2ImageProcessor", do_resize=True, resample=2, do_rescale=True,
               rescale_factor=1 / 255, do_normalize=True, image_mean=pre["mean"], image_std=pre["std"],
               do_convert_rgb=True, patch_size=m.vision.patch_size,
               max_num_patches=max_patches or m.vision.max_num_patches)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
      json.dump(cfg, f, indent=1)
    return
  name = "CLIPImageProcessor" if family == "hf_clip" else "SiglipImageProcessor"
  size = {"shortest_edge": m.image_size} if family == "hf_clip" else {"height": m.image_size, "width": m.image_size}
  cfg = dict(image_processor_type=name, do_resize=True, size=size, resample=3, do_rescale=True,
             rescale_factor=1 / 255, do_normalize=True, image_mean=pre["mean"], image_std=pre["std"],
             do_convert_rgb=True)
  if family == "hf_clip":
    cfg.update(do_center_crop=True, crop_size={"height": m.image_size, "width": m.image_size})
  with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
