"""Name and layout maps between reference state dicts (open_clip, Hugging Face) and vlmjax params.

A family's map is a list of rules `(regex over our dotted key, reference key template, kind)`.
Our keys are unrolled (`vision.blocks.layers.3.attn.q.kernel`); `kind` says how the
tensor's layout differs:

  copy    same array                      linear  torch Linear weight [out, in] -> kernel [in, out]
  patch   conv [D, 3, p, p] -> [p*p*3, D]  row     [D] -> [1, D] (class token)
  probe   [1, N, D] -> [N, D]              scalar  [] or [1] -> []
  qkv_w   fused in_proj_weight / timm qkv.weight [3D, C]: slice q | k | v, transposed
          (or separate q/k/v_proj_weight)
  qkv_b   fused in_proj_bias / timm qkv.bias [3D]: slice q | k | v
  kv_w    timm's fused kv.weight [2D, C] (the MAP head): slice k | v, transposed
  kv_b    timm's fused kv.bias [2D]: slice k | v

`open_clip_siglip` is open_clip's ViT-B-16-SigLIP layout: a timm ViT (`visual.trunk.*`, MAP
head `attn_pool`) and open_clip's text tower pooled at the last token with a biased projection.
`hf_siglip2` is HF's Siglip2Model (NaFlex): SiglipModel's names, but the patch embedding is an
nn.Linear over patches flattened row, column, channel (its image processor's order, and ours),
so it maps as `linear`; its position embedding is a square grid's table, used as is by the ViT at the
native grid or resized per image by the NaFlex encoder (`models/naflex.py`, which names its parameters as
the ViT: one map for both; see `vlmjax.convert.check_siglip2`).
"""

from __future__ import annotations

import re

import numpy as np

Rule = tuple[str, str, str]
FAMILIES = ("open_clip", "open_clip_siglip", "hf_clip", "hf_siglip", "hf_siglip2")
QKV = "qkv"
FUSED = {"qkv_w": "qkv", "qkv_b": "qkv", "kv_w": "kv", "kv_b": "kv"}  # kind -> the parts, in order


def _norm(ours: str, ref: str) -> list[Rule]:
  return [(ours + r"\.scale", ref + ".weight", "copy"), (ours + r"\.bias", ref + ".bias", "copy")]


def _linear(ours: str, ref: str) -> list[Rule]:
  return [(ours + r"\.kernel", ref + ".weight", "linear"), (ours + r"\.bias", ref + ".bias", "copy")]


def _mha(ours: str, ref: str) -> list[Rule]:
  """torch nn.MultiheadAttention (fused in-projection)."""
  return [(ours + r"\.([qkv])\.kernel", ref + ".in_proj_weight", "qkv_w"),
          (ours + r"\.([qkv])\.bias", ref + ".in_proj_bias", "qkv_b"), *_linear(ours + r"\.out", ref + ".out_proj")]


def _mlp(ours: str, ref: str, fc1: str, fc2: str) -> list[Rule]:
  return [*_linear(ours + r"\.fc1", f"{ref}.{fc1}"), *_linear(ours + r"\.fc2", f"{ref}.{fc2}")]


def _oc_block(ours: str, ref: str) -> list[Rule]:
  """open_clip ResidualAttentionBlock (`ln_1`, fused `attn`, `ln_2`, `mlp.c_fc|c_proj`)."""
  return [*_norm(ours + r"\.ln1", ref + ".ln_1"), *_mha(ours + r"\.attn", ref + ".attn"),
          *_norm(ours + r"\.ln2", ref + ".ln_2"), *_mlp(ours + r"\.mlp", ref + ".mlp", "c_fc", "c_proj")]


def _oc_stack(ours: str, ref: str) -> list[Rule]:
  return _oc_block(ours + r"\.blocks\.layers\.(\d+)", ref + r".\1")


def _hf_stack(ours: str, ref: str) -> list[Rule]:
  """HF CLIP/SigLIP encoder layers (`layer_norm1`, `self_attn.q_proj|k_proj|v_proj|out_proj`, ...)."""
  b, r = ours + r"\.blocks\.layers\.(\d+)", ref + r".\1"
  return [*_norm(b + r"\.ln1", r + ".layer_norm1"), *_norm(b + r"\.ln2", r + ".layer_norm2"),
          *_linear(b + r"\.attn\.([qkv])", r + r".self_attn.\2_proj"), *_linear(b + r"\.attn\.out", r + ".self_attn.out_proj"),
          *_mlp(b + r"\.mlp", r, "mlp.fc1", "mlp.fc2")]


def _timm_stack(ours: str, ref: str) -> list[Rule]:
  """timm ViT blocks (`norm1`, fused `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1|fc2`)."""
  b, r = ours + r"\.blocks\.layers\.(\d+)", ref + r".\1"
  return [*_norm(b + r"\.ln1", r + ".norm1"), (b + r"\.attn\.([qkv])\.kernel", r + ".attn.qkv.weight", "qkv_w"),
          (b + r"\.attn\.([qkv])\.bias", r + ".attn.qkv.bias", "qkv_b"), *_linear(b + r"\.attn\.out", r + ".attn.proj"),
          *_norm(b + r"\.ln2", r + ".norm2"), *_mlp(b + r"\.mlp", r, "mlp.fc1", "mlp.fc2")]


def _timm_map(ours: str, ref: str) -> list[Rule]:
  """timm's AttentionPoolLatent (`latent`, `q`, fused `kv`, `proj`, `norm`, `mlp`) as our MAP head."""
  return [(ours + r"\.queries", ref + ".latent", "probe"), *_linear(ours + r"\.attn\.q", ref + ".q"),
          (ours + r"\.attn\.([kv])\.kernel", ref + ".kv.weight", "kv_w"),
          (ours + r"\.attn\.([kv])\.bias", ref + ".kv.bias", "kv_b"), *_linear(ours + r"\.attn\.out", ref + ".proj"),
          *_norm(ours + r"\.ln_out", ref + ".norm"), *_mlp(ours + r"\.mlp", ref + ".mlp", "fc1", "fc2")]


def _oc_vision(v: str = "visual") -> list[Rule]:
  return [(r"vision\.embed\.kernel", f"{v}.conv1.weight", "patch"), (r"vision\.cls", f"{v}.class_embedding", "row"),
          (r"vision\.posemb", f"{v}.positional_embedding", "copy"), *_norm(r"vision\.ln_pre", f"{v}.ln_pre"),
          *_oc_stack(r"vision", f"{v}.transformer.resblocks")]


def _oc_text(t: str) -> list[Rule]:
  p = t + "." if t else ""
  return [(r"text\.token_embed\.embedding", f"{p}token_embedding.weight", "copy"),
          (r"text\.posemb", f"{p}positional_embedding", "copy"), (r"text\.cls", f"{p}cls_emb", "copy"),
          *_oc_stack(r"text", f"{p}transformer.resblocks"), *_norm(r"text\.ln", f"{p}ln_final"),
          (r"text_proj\.kernel", f"{p}text_projection", "copy")]


OPEN_CLIP_CLIP: list[Rule] = [
    *_oc_vision(), *_norm(r"vision\.ln", "visual.ln_post"), (r"image_proj\.kernel", "visual.proj", "copy"),
    *_oc_text(""), (r"logit_scale", "logit_scale", "scalar"), (r"logit_bias", "logit_bias", "scalar")]

OPEN_CLIP_COCA: list[Rule] = [
    *_oc_vision(), (r"caption_pool\.queries", "visual.attn_pool.query", "copy"),
    *_norm(r"caption_pool\.ln_q", "visual.attn_pool.ln_q"), *_norm(r"caption_pool\.ln_ctx", "visual.attn_pool.ln_k"),
    *_mha(r"caption_pool\.attn", "visual.attn_pool.attn"), *_norm(r"pool_norm", "visual.ln_post"),
    (r"image_proj\.kernel", "visual.proj", "copy"), *_oc_text("text"),
    *_oc_block(r"decoder\.blocks\.layers\.(\d+)\.self_block", r"text_decoder.resblocks.\1"),
    *_oc_block(r"decoder\.blocks\.layers\.(\d+)\.cross_block", r"text_decoder.cross_attn.\1"),
    *_norm(r"decoder\.blocks\.layers\.(\d+)\.cross_block\.ln_kv", r"text_decoder.cross_attn.\1.ln_1_kv"),
    *_norm(r"decoder\.ln", "text_decoder.ln_final"), (r"decoder\.head\.kernel", "text_decoder.text_projection", "copy"),
    (r"logit_scale", "logit_scale", "scalar"), (r"logit_bias", "logit_bias", "scalar")]

_TRUNK = "visual.trunk"
OPEN_CLIP_SIGLIP: list[Rule] = [
    (r"vision\.embed\.bias", f"{_TRUNK}.patch_embed.proj.bias", "copy"),
    (r"vision\.embed\.kernel", f"{_TRUNK}.patch_embed.proj.weight", "patch"),
    (r"vision\.posemb", f"{_TRUNK}.pos_embed", "probe"), *_timm_stack(r"vision", f"{_TRUNK}.blocks"),
    *_norm(r"vision\.ln", f"{_TRUNK}.norm"), *_timm_map(r"vision\.map", f"{_TRUNK}.attn_pool"),
    (r"text\.token_embed\.embedding", "text.token_embedding.weight", "copy"),
    (r"text\.posemb", "text.positional_embedding", "copy"), *_oc_stack(r"text", "text.transformer.resblocks"),
    *_norm(r"text\.ln", "text.ln_final"), *_linear(r"text_proj", "text.text_projection"),
    (r"logit_scale", "logit_scale", "scalar"), (r"logit_bias", "logit_bias", "scalar")]

HF_CLIP: list[Rule] = [
    (r"vision\.embed\.kernel", "vision_model.embeddings.patch_embedding.weight", "patch"),
    (r"vision\.cls", "vision_model.embeddings.class_embedding", "row"),
    (r"vision\.posemb", "vision_model.embeddings.position_embedding.weight", "copy"),
    *_norm(r"vision\.ln_pre", "vision_model.pre_layrnorm"), *_hf_stack(r"vision", "vision_model.encoder.layers"),
    *_norm(r"vision\.ln", "vision_model.post_layernorm"), *_linear(r"image_proj", "visual_projection"),
    (r"text\.token_embed\.embedding", "text_model.embeddings.token_embedding.weight", "copy"),
    (r"text\.posemb", "text_model.embeddings.position_embedding.weight", "copy"),
    *_hf_stack(r"text", "text_model.encoder.layers"), *_norm(r"text\.ln", "text_model.final_layer_norm"),
    *_linear(r"text_proj", "text_projection"), (r"logit_scale", "logit_scale", "scalar")]

HF_SIGLIP: list[Rule] = [
    (r"vision\.embed\.bias", "vision_model.embeddings.patch_embedding.bias", "copy"),
    (r"vision\.embed\.kernel", "vision_model.embeddings.patch_embedding.weight", "patch"),
    (r"vision\.posemb", "vision_model.embeddings.position_embedding.weight", "copy"),
    *_hf_stack(r"vision", "vision_model.encoder.layers"), *_norm(r"vision\.ln", "vision_model.post_layernorm"),
    (r"vision\.map\.queries", "vision_model.head.probe", "probe"), *_mha(r"vision\.map\.attn", "vision_model.head.attention"),
    *_norm(r"vision\.map\.ln_out", "vision_model.head.layernorm"),
    *_mlp(r"vision\.map\.mlp", "vision_model.head.mlp", "fc1", "fc2"),
    (r"text\.token_embed\.embedding", "text_model.embeddings.token_embedding.weight", "copy"),
    (r"text\.posemb", "text_model.embeddings.position_embedding.weight", "copy"),
    *_hf_stack(r"text", "text_model.encoder.layers"), *_norm(r"text\.ln", "text_model.final_layer_norm"),
    *_linear(r"text_proj", "text_model.head"), (r"logit_scale", "logit_scale", "scalar1"),
    (r"logit_bias", "logit_bias", "scalar1")]

HF_SIGLIP2: list[Rule] = [  # the patch embedding is an nn.Linear [D, p*p*3] over (row, column, channel)
    (r"vision\.embed\.kernel", "vision_model.embeddings.patch_embedding.weight", "linear"),
    *[rule for rule in HF_SIGLIP if rule[0] != r"vision\.embed\.kernel"]]


def rules(family: str, model_name: str) -> list[Rule]:
  """The rule list for a reference family and our model family (`two_tower` | `coca`)."""
  table = {("open_clip", "two_tower"): OPEN_CLIP_CLIP, ("open_clip", "coca"): OPEN_CLIP_COCA,
           ("open_clip_siglip", "two_tower"): OPEN_CLIP_SIGLIP,
           ("hf_clip", "two_tower"): HF_CLIP, ("hf_siglip", "two_tower"): HF_SIGLIP,
           ("hf_siglip2", "two_tower"): HF_SIGLIP2}
  if (family, model_name) not in table:
    valid = ", ".join(f"{f} -> {m}" for f, m in table)
    raise KeyError(f"no map from {family} checkpoints to model.name={model_name!r}; valid: {valid}")
  return table[(family, model_name)]


def match(rule_list: list[Rule], key: str) -> tuple[str, str, int | None]:
  """Our key -> (reference key, kind, index in a fused tensor or None); KeyError if no rule covers it."""
  for pattern, template, kind in rule_list:
    m = re.fullmatch(pattern, key)
    if m:
      index = FUSED[kind].index(m.group(m.lastindex)) if kind in FUSED else None
      return m.expand(template), kind, index
  raise KeyError(key)


def to_ours(kind: str, ref: np.ndarray, index: int | None, patch: int | None = None) -> np.ndarray:
  """A reference tensor (or its q/k/v part) in our layout."""
  if kind == "copy":
    return ref
  if kind == "linear":
    return ref.T
  if kind == "patch":
    d = ref.shape[0]
    return ref.transpose(2, 3, 1, 0).reshape(-1, d)
  if kind == "row":
    return ref[None]
  if kind == "probe":
    return ref.reshape(ref.shape[-2:])
  if kind in ("scalar", "scalar1"):
    return ref.reshape(())
  n = ref.shape[0] // len(FUSED[kind])
  part = ref[index * n:(index + 1) * n]
  return part.T if kind in ("qkv_w", "kv_w") else part


def to_ref(kind: str, ours: list[np.ndarray]) -> np.ndarray:
  """Our tensor(s) (one per part for fused kinds) in the reference layout."""
  x = ours[0]
  if kind == "copy":
    return x
  if kind == "linear":
    return x.T
  if kind == "patch":
    d = x.shape[1]
    p = int(round((x.shape[0] // 3) ** 0.5))
    return x.reshape(p, p, 3, d).transpose(3, 2, 0, 1)
  if kind == "row":
    return x[0]
  if kind == "probe":
    return x[None]
  if kind == "scalar":
    return x.reshape(())
  if kind == "scalar1":
    return x.reshape((1,))
  if kind in ("qkv_w", "kv_w"):
    return np.concatenate([k.T for k in ours], axis=0)
  return np.concatenate(ours, axis=0)
