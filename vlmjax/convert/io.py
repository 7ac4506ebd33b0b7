"""Reading reference state dicts (.safetensors without torch; .pt/.bin with it) and writing .safetensors."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil

import numpy as np

from vlmjax.errors import ConfigError

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
IGNORED = ("position_ids", "attn_mask")  # buffers some checkpoints carry; not parameters


def _strip(state: dict) -> dict:
  """Unwraps open_clip training checkpoints ({"state_dict": {"module.visual...": ...}})."""
  if "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  out = {}
  for k, v in state.items():
    k = k[len("module."):] if k.startswith("module.") else k
    if not k.endswith(IGNORED):
      out[k] = v
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ConfigError(f"reading {path!r} needs torch (not installed); convert it to .safetensors first, "
                      "or install torch") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, dict):
    raise ConfigError(f"{path!r} holds a {type(state).__name__}, not a state dict")
  state = _strip(state)
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _read_file(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return _strip(load_file(path))
  if path.endswith((".pt", ".pth", ".bin")):
    return _read_torch(path)
  raise ConfigError(f"checkpoint {path!r} is not .safetensors, .pt, .pth or .bin")


def hf_weight_files(directory: str) -> list[str]:
  """The weight files of a Hugging Face model directory (single or sharded)."""
  for name in HF_WEIGHTS:
    index = os.path.join(directory, name + ".index.json")
    if os.path.exists(index):
      with open(index) as f:
        return [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
    if os.path.exists(os.path.join(directory, name)):
      return [os.path.join(directory, name)]
  raise ConfigError(f"checkpoint directory {directory!r} has none of {', '.join(HF_WEIGHTS)} (or a sharded index)")


def read(path: str) -> dict[str, np.ndarray]:
  """A state dict as float32 NumPy arrays from a file or a Hugging Face model directory."""
  if not os.path.exists(path):
    raise ConfigError(f"checkpoint {path!r} does not exist")
  files = hf_weight_files(path) if os.path.isdir(path) else [path]
  state: dict[str, np.ndarray] = {}
  for f in files:
    state.update(_read_file(f))
  return {k: np.asarray(v, np.float32) for k, v in state.items()}


def hf_model_type(path: str) -> str | None:
  """`model_type` from config.json beside an HF checkpoint (`clip`, `siglip`, ...), or None."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  cfg = os.path.join(directory, "config.json")
  if not os.path.exists(cfg):
    return None
  with open(cfg) as f:
    return json.load(f).get("model_type")


def write_safetensors(state: dict[str, np.ndarray], path: str) -> None:
  """Writes `path` whole or not at all (a temporary file beside it, then renamed)."""
  from safetensors.numpy import save_file
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.partial-{os.getpid()}"
  try:
    # np.ascontiguousarray turns a 0-d array into shape (1,): logit_scale must stay 0-d (transformers'
    # CLIPModel refuses a (1,) one)
    save_file({k: np.require(v, requirements="C") for k, v in state.items()}, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def check_new_dir(out: str) -> None:
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f"--out {out!r} already exists and is not an empty directory; choose a new one")


@contextlib.contextmanager
def staged_dir(out: str):
  """Yields a fresh directory beside `out` (new or empty, else a ConfigError) that becomes `out` when the
  block ends; on any error it is removed, so `out` appears whole or not at all."""
  check_new_dir(out)
  tmp = f"{os.path.abspath(out).rstrip(os.sep)}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.isdir(out):
      os.rmdir(out)  # empty, checked above
    os.rename(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def find_tokenizer_json(path: str) -> str | None:
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  hits = glob.glob(os.path.join(directory, "tokenizer.json"))
  return hits[0] if hits else None
