"""Public checkpoints in and out: open_clip and Hugging Face CLIP / SigLIP / SigLIP 2 / CoCa <-> vlmjax params.

    vlmjax convert --from open_clip --checkpoint coca.safetensors --config configs/openclip_coca_b16.py --out DIR
    params = vlmjax.convert.load_params(DIR, abstract_params)   # what `cfg.init_from` does

`DIR/params` is an orbax StandardSave of the pure param dict; `DIR/convert.json` records
the source, family, config and tokenizer. Modules: `io` (read/write state dicts),
`mapping` (name and layout rules per family), `params` (checked conversion both ways),
`tokenizer` (open_clip's BPE as a tokenizer.json), `commands` (the CLI).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from vlmjax.errors import ConfigError

PARAMS_DIR, META = "params", "convert.json"


SIGLIP_KEYS = ("visual.trunk.attn_pool.latent", "text.text_projection.bias")  # open_clip ViT-B-16-SigLIP


HF_KINDS = {"clip": "clip (CLIPModel)", "siglip": "siglip (SiglipModel)",
            "siglip2": "siglip2 (Siglip2Model: the ViT at its native square grid, or model.vision.kind=naflex)"}
SIGLIP2_POSEMB, SIGLIP2_PATCH = ("vision_model.embeddings.position_embedding.weight",
                                 "vision_model.embeddings.patch_embedding.weight")


def _hf_kind(checkpoint: str, state: dict) -> str:
  """config.json's `model_type`, else guessed from the keys (Siglip2's patch embedding is a 2-D Linear)."""
  from vlmjax.convert import io
  kind = io.hf_model_type(checkpoint)
  if kind is None and "vision_model.head.probe" in state:
    kind = "siglip2" if getattr(state.get(SIGLIP2_PATCH), "ndim", 4) == 2 else "siglip"
  return kind or "clip"


def family_of(source: str, checkpoint: str, state: dict) -> str:
  """`open_clip` | `open_clip_siglip` | `hf_clip` | `hf_siglip` | `hf_siglip2` from `--from` and the
  checkpoint's config.json or keys."""
  if source == "open_clip":
    if any(k.startswith("text.transformer.embeddings") for k in state):
      raise ConfigError(f"{checkpoint!r} has a Hugging Face text tower inside open_clip; not supported "
                        "(supported: open_clip CLIP / CoCa towers, and ViT-B-16-SigLIP's timm ViT with a MAP head)")
    if any(k.startswith("visual.trunk.") for k in state):
      if not all(k in state for k in SIGLIP_KEYS):
        missing = next(k for k in SIGLIP_KEYS if k not in state)
        raise ConfigError(f"{checkpoint!r} has a timm image tower but no {missing!r}; supported timm layout: "
                          "ViT-B-16-SigLIP's (MAP head `attn_pool`, biased text projection)")
      return "open_clip_siglip"
    return "open_clip"
  if source != "hf":
    raise ConfigError(f"--from must be open_clip, hf or big_vision, got {source!r}")
  kind = _hf_kind(checkpoint, state)
  if kind not in HF_KINDS:
    raise ConfigError(f"{checkpoint!r} is an HF {kind!r} model; supported: {', '.join(HF_KINDS.values())}")
  if kind == "siglip2" and SIGLIP2_POSEMB in state:
    n = state[SIGLIP2_POSEMB].shape[0]
    if math.isqrt(n) ** 2 != n:
      raise ConfigError(f"{checkpoint!r} is a Siglip2 (NaFlex) checkpoint with num_patches={n}, not a square grid; "
                        "supported: square images at the checkpoint's square native grid, or any grid through "
                        "model.vision.kind=naflex, both from a square position table (as transformers requires)")
  return f"hf_{kind}"


def check_siglip2(checkpoint: str, state: dict, model_cfg) -> None:
  """A Siglip2 (NaFlex) checkpoint converts into the NaFlex encoder (`model.vision.kind=naflex`: any grid,
  the same position table and patch size), or into the ViT for square images at its native grid only:
  there its per-image bilinear resize of the position embedding is the identity, and our ViT is that model."""
  if SIGLIP2_POSEMB not in state or SIGLIP2_PATCH not in state:
    return  # params.to_ours names the missing tensor
  grid = math.isqrt(state[SIGLIP2_POSEMB].shape[0])
  patch = math.isqrt(state[SIGLIP2_PATCH].shape[1] // 3)
  if model_cfg.vision.kind == "naflex":
    v = model_cfg.vision
    if (v.num_patches, v.patch_size) != (grid * grid, patch):
      raise ConfigError(f"{checkpoint!r} has a {grid}x{grid} position table of {patch}-px patches; the config has "
                        f"model.vision.num_patches={v.num_patches}, patch_size={v.patch_size} (set "
                        f"{grid * grid} and {patch})")
    return
  ours = model_cfg.image_size // model_cfg.vision.patch_size
  if ours != grid or model_cfg.vision.patch_size != patch:
    raise ConfigError(f"{checkpoint!r} is a Siglip2 (NaFlex) checkpoint with a {grid}x{grid} native grid of "
                      f"{patch}-px patches; model.image_size={model_cfg.image_size} with patch "
                      f"{model_cfg.vision.patch_size} makes a {ours}x{ours} grid. Supported: square images at the "
                      f"native grid (model.image_size={grid * patch}, model.vision.patch_size={patch}); other grids "
                      "need the NaFlex encoder (model.vision.kind=naflex)")


def export_family(source: str, model_cfg) -> str:
  """The reference family `--reverse` writes for `--from SOURCE` and a model config."""
  siglip = model_cfg.name == "two_tower" and model_cfg.vision.pool == "map"
  if source == "open_clip":
    return "open_clip_siglip" if siglip else "open_clip"
  return "hf_siglip" if siglip else "hf_clip"


def convert(source: str, checkpoint: str, model_cfg, abstract_params: Any, *, vocab_offset: int = 0) -> Any:
  """Reads `checkpoint` and returns our pure param dict (NumPy) shaped like `abstract_params`."""
  from vlmjax.convert import io, params
  if source == "big_vision":  # read as SiglipModel's state dict (names and layouts)
    from vlmjax.convert import big_vision
    state, family = big_vision.read(checkpoint), "hf_siglip"
  else:
    state = io.read(checkpoint)
    family = family_of(source, checkpoint, state)
  if family == "hf_siglip2":
    check_siglip2(checkpoint, state, model_cfg)
  return params.to_ours(state, family, model_cfg, abstract_params, where=f"checkpoint {checkpoint!r}",
                        vocab_offset=vocab_offset)


def save_params(out_dir: str, params: Any, meta: dict) -> str:
  """Writes `params` with orbax StandardSave under OUT/params and `meta` as OUT/convert.json."""
  import orbax.checkpoint as ocp
  path = os.path.join(os.path.abspath(out_dir), PARAMS_DIR)
  if os.path.exists(path):
    raise ConfigError(f"{path!r} already exists; choose a new --out directory")
  os.makedirs(out_dir, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=1)
  return path


def params_dir(path: str) -> str:
  """The params directory of converted weights at `path` (DIR or DIR/params); a ConfigError if none."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, PARAMS_DIR)):
    path = os.path.join(path, PARAMS_DIR)
  if not os.path.isdir(path):
    raise ConfigError(f"init checkpoint {path!r} does not exist (expected a `vlmjax convert --out` directory)")
  return path


def stored_shapes(item_dir: str) -> dict[str, tuple]:
  """{dotted key: shape} of the arrays of an orbax StandardSave item (converted params, or a run's
  `checkpoints/STEP/state`), from its metadata alone."""
  import orbax.checkpoint as ocp
  from vlmjax.convert.params import flatten
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(item_dir).item_metadata.tree
  return {key: tuple(leaf.shape) for key, leaf in flatten(tree).items()}


def compare_shapes(where: str, stored: dict[str, tuple], abstract_params: Any, skip=()) -> None:
  """A ConfigError naming the first parameter of `abstract_params` that `stored` (shapes by key) lacks
  or holds in another shape; the keys in `skip` are checked by the caller (position embeddings)."""
  from vlmjax.convert.params import flatten
  for key, leaf in flatten(abstract_params).items():
    if key in skip:
      continue
    if key not in stored:
      raise ConfigError(f"{where} lacks parameter {key} {tuple(leaf.shape)}")
    if tuple(stored[key]) != tuple(leaf.shape):
      raise ConfigError(f"{where} parameter {key} is {tuple(stored[key])}, the config wants {tuple(leaf.shape)}")


def check_params(path: str, abstract_params: Any) -> str:
  """The params directory of converted weights at `path` (DIR or DIR/params), checked against
  `abstract_params` from its metadata alone: a ConfigError naming what is missing or mis-shaped."""
  path = params_dir(path)
  compare_shapes(f"init checkpoint {path!r}", stored_shapes(path), abstract_params)
  return path


def load_params(path: str, abstract_params: Any) -> Any:
  """Restores converted params (DIR or DIR/params) onto `abstract_params` (ShapeDtypeStructs, with
  shardings if they carry them). Shapes must match; a mismatch is a ConfigError naming the tensor."""
  import jax
  import orbax.checkpoint as ocp
  path = check_params(path, abstract_params)
  with ocp.StandardCheckpointer() as ckptr:
    target = jax.tree.map(lambda a: a if getattr(a, "sharding", None) is not None else jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])), abstract_params)
    return ckptr.restore(path, target)
