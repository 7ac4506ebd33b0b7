"""big_vision two-towers SigLIP checkpoints (.npz) read as the state dict of transformers' SiglipModel.

    state = big_vision.read("webli_en_b16_224_63724782.npz")   # or to_hf({name: array}, where) on arrays in hand
    params = vlmjax.convert.params.to_ours(state, "hf_siglip", cfg.model, abstract_params)

big_vision saves a flax parameter tree as an .npz of '/'-joined names: under `params/` (what
Google publishes; a training checkpoint's other entries, the optimiser state, are left out as
big_vision's own loader does), under `opt/target/` (old Flax-optimiser checkpoints), or bare. A
SigLIP model (`proj.image_text.two_towers`) holds `img/` (a ViT with a MAP head and no head after
it), `txt/` (the text transformer, pooled at the last token, with a biased head), the temperature
`t` and the bias `b` (both [1], `t` as its log). Encoder blocks are unrolled (`encoderblock_0`,
`encoderblock_1`, ...) or scanned (`scan=True`: one `encoderblock` whose arrays have a leading depth
axis). bfloat16 arrays come back from NumPy as 2-byte voids. `read` returns each tensor under the
name and in the layout SiglipModel's state dict has (float32):

  big_vision (flax)                          SiglipModel (torch)
  Dense kernel [in, out]                     Linear weight [out, in]
  attention query|key|value kernel           q|k|v_proj weight [heads*hd, D], bias [heads*hd]
    [D, heads, hd], bias [heads, hd]
  attention out kernel [heads, hd, D]        out_proj weight [D, heads*hd]
  MAP head query|key|value                   fused in_proj_weight [3D, D], in_proj_bias [3D]
  embedding conv kernel [p, p, 3, D]         patch_embedding weight [D, 3, p, p]
  pos_embedding [1, N, D]                    position_embedding weight [N, D]
  t, b [1]                                   logit_scale, logit_bias [1]

Older text towers that also kept a position embedding in `txt/Encoder_0` have it added to the
tower's own, as big_vision's text loader does. A model without the bias `b` or without a text head
(`OPTIONAL`) reads without `logit_bias` or `text_model.head`. Everything else must fit: a tensor with no place in
SiglipModel, one it needs that the file lacks, or a file that is no two-towers model (a plain ViT
classifier, say) is a one-line ConfigError naming the tensor and the file.
"""

from __future__ import annotations

import os
import re
import zipfile

import ml_dtypes
import numpy as np

from vlmjax.errors import ConfigError

PREFIXES = ("params/", "opt/target/")  # where a checkpoint keeps the parameters; else the names are bare
ENCODERS = {"img/Transformer": "vision_model.encoder.layers", "txt/Encoder_0": "text_model.encoder.layers"}
QKV = (("query", "q"), ("key", "k"), ("value", "v"))
OLD_TEXT_POSEMB = "txt/Encoder_0/pos_embedding"
# Groups of tensors a SigLIP-like two-towers model may lack whole: `b` (built without `bias_init`, CLIP-style),
# the text head (text `out_dim=None`, as big_vision's So400m/16-i18n; convert with model.text_proj="none").
OPTIONAL = (("b",), ("txt/head/kernel", "txt/head/bias"))

# A rule: (big_vision name, SiglipModel name, layout kind, part of a fused tensor or None).
Rule = tuple[str, str, str, "int | None"]
NDIM = {"copy": None, "dense": 2, "heads_in": 3, "heads_bias": 2, "heads_out": 3, "conv": 4, "posemb": 3}


def _norm(bv: str, hf: str) -> list[Rule]:
  return [(f"{bv}/scale", f"{hf}.weight", "copy", None), (f"{bv}/bias", f"{hf}.bias", "copy", None)]


def _dense(bv: str, hf: str) -> list[Rule]:
  return [(f"{bv}/kernel", f"{hf}.weight", "dense", None), (f"{bv}/bias", f"{hf}.bias", "copy", None)]


def _mlp(bv: str, hf: str) -> list[Rule]:
  return [*_dense(f"{bv}/MlpBlock_0/Dense_0", f"{hf}.fc1"), *_dense(f"{bv}/MlpBlock_0/Dense_1", f"{hf}.fc2")]


def _attention(bv: str, hf: str, fused: bool) -> list[Rule]:
  """flax MultiHeadDotProductAttention -> HF's separate q/k/v_proj, or torch's fused in_proj (MAP head)."""
  bv = f"{bv}/MultiHeadDotProductAttention_0"
  out = []
  for part, (name, letter) in enumerate(QKV):
    if fused:
      out += [(f"{bv}/{name}/kernel", f"{hf}.in_proj_weight", "heads_in", part),
              (f"{bv}/{name}/bias", f"{hf}.in_proj_bias", "heads_bias", part)]
    else:
      out += [(f"{bv}/{name}/kernel", f"{hf}.{letter}_proj.weight", "heads_in", None),
              (f"{bv}/{name}/bias", f"{hf}.{letter}_proj.bias", "heads_bias", None)]
  return out + [(f"{bv}/out/kernel", f"{hf}.out_proj.weight", "heads_out", None),
                (f"{bv}/out/bias", f"{hf}.out_proj.bias", "copy", None)]


def _block(bv: str, hf: str) -> list[Rule]:
  return [*_norm(f"{bv}/LayerNorm_0", f"{hf}.layer_norm1"), *_attention(bv, f"{hf}.self_attn", fused=False),
          *_norm(f"{bv}/LayerNorm_1", f"{hf}.layer_norm2"), *_mlp(bv, f"{hf}.mlp")]


def rules(depths: dict[str, int]) -> dict[str, tuple[str, str, int | None]]:
  """{big_vision name: (SiglipModel name, kind, part)} for encoders of the given depths."""
  v, t, head = "vision_model", "text_model", "img/MAPHead_0"
  out: list[Rule] = [
      ("img/embedding/kernel", f"{v}.embeddings.patch_embedding.weight", "conv", None),
      ("img/embedding/bias", f"{v}.embeddings.patch_embedding.bias", "copy", None),
      ("img/pos_embedding", f"{v}.embeddings.position_embedding.weight", "posemb", None),
      *_norm("img/Transformer/encoder_norm", f"{v}.post_layernorm"),
      (f"{head}/probe", f"{v}.head.probe", "copy", None), *_attention(head, f"{v}.head.attention", fused=True),
      *_norm(f"{head}/LayerNorm_0", f"{v}.head.layernorm"), *_mlp(head, f"{v}.head.mlp"),
      ("txt/Embed_0/embedding", f"{t}.embeddings.token_embedding.weight", "copy", None),
      ("txt/pos_embedding", f"{t}.embeddings.position_embedding.weight", "posemb", None),
      *_norm("txt/Encoder_0/encoder_norm", f"{t}.final_layer_norm"), *_dense("txt/head", f"{t}.head"),
      ("t", "logit_scale", "copy", None), ("b", "logit_bias", "copy", None)]
  for encoder, layers in ENCODERS.items():
    for i in range(depths[encoder]):
      out += _block(f"{encoder}/encoderblock_{i}", f"{layers}.{i}")
  return {bv: (hf, kind, part) for bv, hf, kind, part in out}


def _float32(x: np.ndarray, key: str, path: str) -> np.ndarray:
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:  # bfloat16, as NumPy stores it
    x = x.view(ml_dtypes.bfloat16)
  try:
    return np.asarray(x, np.float32)
  except (TypeError, ValueError):
    raise ConfigError(f"big_vision checkpoint {path!r}: tensor {key!r} has dtype {x.dtype}, not a number") from None


def _load(path: str) -> dict[str, np.ndarray]:
  """The parameters of the .npz at `path`, prefix stripped, as float32."""
  if not os.path.isfile(path):
    raise ConfigError(f"big_vision checkpoint {path!r} does not exist")
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
      raise ValueError(f"one array {npz.shape} (np.save), not named arrays (np.savez)")
    with npz:
      names = list(npz.files)
      prefix = next((p for p in PREFIXES if any(n.startswith(p) for n in names)), "")
      return {n[len(prefix):]: _float32(npz[n], n, path) for n in names if n.startswith(prefix)}
  except ConfigError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ConfigError(f"big_vision checkpoint {path!r} cannot be read as an .npz of arrays "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _unscan(state: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """Scanned blocks (`E/encoderblock/...`, leading depth axis) as unrolled ones (`E/encoderblock_i/...`)."""
  out = {k: v for k, v in state.items() if not any(k.startswith(f"{e}/encoderblock/") for e in ENCODERS)}
  for key, x in state.items():
    if key in out:
      continue
    encoder, rest = key.split("/encoderblock/", 1)
    if x.ndim == 0:
      raise ConfigError(f"big_vision checkpoint {path!r}: scanned tensor {key!r} has no depth axis")
    for i in range(x.shape[0]):
      name = f"{encoder}/encoderblock_{i}/{rest}"
      if name in out:
        raise ConfigError(f"big_vision checkpoint {path!r} holds both scanned {key!r} and unrolled {name!r}")
      out[name] = x[i]
  return out


def _depths(state: dict[str, np.ndarray]) -> dict[str, int]:
  """Each encoder's depth: one more than its highest block index (a gap shows as missing tensors)."""
  depths = {}
  for encoder in ENCODERS:
    found = [re.match(rf"{re.escape(encoder)}/encoderblock_(\d+)/", k) for k in state]
    depths[encoder] = 1 + max((int(m.group(1)) for m in found if m), default=-1)
  return depths


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
  if kind == "dense":
    return x.T
  if kind == "heads_in":  # [D, heads, hd] -> [heads*hd, D]
    return x.reshape(x.shape[0], -1).T
  if kind == "heads_bias":
    return x.reshape(-1)
  if kind == "heads_out":  # [heads, hd, D] -> [D, heads*hd]
    return x.reshape(-1, x.shape[-1]).T
  if kind == "conv":  # [p, p, 3, D] (HWIO) -> [D, 3, p, p] (OIHW)
    return x.transpose(3, 2, 0, 1)
  if kind == "posemb":
    return x.reshape(-1, x.shape[-1])
  return x


def _check_names(state: dict, table: dict, path: str) -> None:
  extra = sorted(k for k in state if k not in table)
  if extra:
    raise ConfigError(f"big_vision checkpoint {path!r}: tensor {extra[0]!r} {tuple(state[extra[0]].shape)} has no "
                      f"place in a SigLIP two-towers model (ViT with a MAP head, text transformer with a head; "
                      f"{len(extra)} such)")
  absent = {k for group in OPTIONAL if not any(n in state for n in group) for k in group}
  missing = [k for k in table if k not in state and k not in absent]
  if missing:
    raise ConfigError(f"big_vision checkpoint {path!r} lacks tensor {missing[0]!r}, which a SigLIP two-towers "
                      f"model has ({len(missing)} missing)")


def read(path: str) -> dict[str, np.ndarray]:
  """A big_vision two-towers SigLIP .npz as transformers' SiglipModel state dict (HF names and layouts,
  float32); `params.to_ours(state, "hf_siglip", ...)` converts it. One-line ConfigErrors otherwise."""
  return to_hf(_load(path), path)


def to_hf(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
  """big_vision parameters by name (prefix stripped, float32) -> SiglipModel's state dict. The
  tensors are views where the layout allows (transposes, reshapes), copies only where fused."""
  if not any(k.startswith(("img/", "txt/")) for k in arrays):
    example = next(iter(sorted(arrays)), None)
    raise ConfigError(f"big_vision checkpoint {where!r} is not a two-towers (SigLIP) model: no img/ or txt/ "
                      f"tensors (found {example!r} among {len(arrays)})")
  state = _unscan(arrays, where)
  if OLD_TEXT_POSEMB in state and "txt/pos_embedding" in state:
    state["txt/pos_embedding"] = state["txt/pos_embedding"] + state.pop(OLD_TEXT_POSEMB)
  table = rules(_depths(state))
  _check_names(state, table, where)
  out: dict[str, np.ndarray] = {}
  fused: dict[str, list] = {}
  for key, x in state.items():
    hf, kind, part = table[key]
    if NDIM[kind] is not None and x.ndim != NDIM[kind]:
      raise ConfigError(f"big_vision checkpoint {where!r}: tensor {key!r} is {tuple(x.shape)}; a {NDIM[kind]}-d "
                        f"array was expected for SiglipModel's {hf}")
    if part is None:
      out[hf] = _to_hf(kind, x)
    else:
      fused.setdefault(hf, [None] * len(QKV))[part] = (key, _to_hf(kind, x))
  for hf, parts in fused.items():
    if len({p[1].shape for p in parts}) > 1:
      raise ConfigError(f"big_vision checkpoint {where!r}: {', '.join(f'{k} {tuple(x.shape)}' for k, x in parts)} "
                        f"differ in shape and cannot form SiglipModel's {hf}")
    out[hf] = np.concatenate([x for _, x in parts], axis=0)
  return out
