"""Golden fixtures for `vlmjax.convert.big_vision`: big_vision's own two-towers SigLIP, toy size, random weights.

    git clone https://github.com/google-research/big_vision /tmp/big_vision   # any checkout of its source
    .venv/bin/python scripts/make_golden_big_vision.py /tmp/big_vision

Builds big_vision's `proj.image_text.two_towers` model (flax linen) as the SigLIP demo configures
released weights (ViT image tower with a MAP head and no image head, the text transformer pooled at
the last token with a head, `temperature_init=10`, `bias_init=-10`, big_vision's defaults: tanh GELU,
LayerNorm eps 1e-6), at the toy size of scripts/make_golden.py's HF SigLIP (image 32, patch 8, width
64, depth 2, 4 heads, MLP 256, vocabulary 100, 12 tokens). Every parameter gets random values (norm
scales near 1, biases ~0.1, so a mis-mapped tensor shows), rounded to bfloat16, and the model runs
on exactly those values, once with `scan=False` and once with `scan=True` (their outputs must agree).
big_vision's `utils` imports `tensorflow.io.gfile` (used only for remote files); where TensorFlow is
absent a stand-in module is put in its place, which touches nothing the model computes.

Writes under tests/fixtures/convert/:

  bv_siglip_loop.npz   the parameters as big_vision saves them: '/'-joined names under `params/`,
                       unrolled blocks (`Transformer/encoderblock_0/...`); bfloat16 arrays, which
                       NumPy stores as void (V2), as in big_vision's own bfloat16 checkpoints
  bv_siglip_scan.npz   the same parameters from the `scan=True` model: one `encoderblock` per
                       encoder with a leading depth axis
  bv_siglip.npz        `image` [B, H, W, 3], `text` [B, L] int32 (row 0 fills the context and ends
                       in EOS; row 1 has EOS at 6, then big_vision's padding: id 1, sticky EOS),
                       big_vision's `image_emb`, `text_emb` (normalised), `logit_scale` (exp t),
                       `logit_bias`
  bv_siglip_full_shapes.json  name -> shape of every tensor of the released B/16 (224 px, unrolled)
                       and So400m/14 (384 px, scanned) SigLIP checkpoints, from big_vision's model on
                       shapes
"""

from __future__ import annotations

import json
import os
import re
import sys
import types

import jax
import ml_dtypes
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "convert")
V, L, IMG, PATCH, W, DEPTH, HEADS, MLP = 100, 12, 32, 8, 64, 2, 4, 256
EOS = 1  # big_vision's SigLIP tokenizers: eos="sticky", pad_value=1
ENCODERS = ("img/Transformer", "txt/Encoder_0")


def import_two_towers(source: str):
  """big_vision's two_towers module from a checkout at `source`."""
  if not os.path.isdir(os.path.join(source, "big_vision", "models")):
    raise SystemExit(f"{source!r} is not a big_vision checkout (no big_vision/models)")
  sys.path.insert(0, os.path.abspath(source))
  try:
    import tensorflow.io.gfile  # noqa: F401
  except ImportError:  # only remote file access uses it
    import flax.training.checkpoints  # noqa: F401  (flax looks for tensorflow itself: before the stand-in)
    tf, tf_io, gfile = (types.ModuleType(n) for n in ("tensorflow", "tensorflow.io", "tensorflow.io.gfile"))
    tf.io, tf_io.gfile = tf_io, gfile
    sys.modules.update({"tensorflow": tf, "tensorflow.io": tf_io, "tensorflow.io.gfile": gfile})
  from big_vision.models.proj.image_text import two_towers
  return two_towers


def model_config(scan: bool) -> dict:
  tower = dict(width=W, depth=DEPTH, mlp_dim=MLP, num_heads=HEADS, scan=scan)
  return dict(image=dict(tower, patch_size=(PATCH, PATCH), pool_type="map"),
              text=dict(tower, vocab_size=V), out_dim=(None, W), temperature_init=10.0, bias_init=-10.0)


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested dicts -> {'a/b/c': leaf}, names sorted (as big_vision's tree_flatten_with_names)."""
  out = {}
  for k in sorted(tree):
    name = f"{prefix}/{k}" if prefix else k
    out.update(flatten(tree[k], name) if isinstance(tree[k], dict) else {name: tree[k]})
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for name, x in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return tree


def randomise(flat: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
  """Fresh values for every parameter, whatever its init (zeros, ones, 1e-6 normals), bfloat16-exact."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, x in flat.items():
    *_, parent, leaf = ("",) + tuple(name.split("/"))
    noise = rng.standard_normal(x.shape)
    if leaf == "t":
      y = np.full(x.shape, 2.3)  # exp(2.3) ~ 10, as temperature_init
    elif leaf == "b":
      y = np.full(x.shape, -3.0)
    elif leaf == "scale":
      y = 1 + 0.1 * noise
    elif leaf == "bias":
      y = 0.1 * noise
    elif leaf == "probe":
      y = noise
    elif leaf in ("embedding", "pos_embedding"):
      y = noise / np.sqrt(x.shape[-1])
    else:  # kernels: unit-variance outputs; q/k/v are [D, heads, head_dim], out [heads, head_dim, D]
      fan_in = x.shape[0] if parent in ("query", "key", "value") else int(np.prod(x.shape[:-1]))
      y = noise / np.sqrt(fan_in)
    out[name] = y.astype(ml_dtypes.bfloat16).astype(np.float32)
  return out


def to_scanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Unrolled blocks `E/encoderblock_i/...` stacked into `E/encoderblock/...` (leading depth axis)."""
  out, stacks = {}, {}
  for name, x in flat.items():
    encoder = next((e for e in ENCODERS if name.startswith(e + "/encoderblock_")), None)
    if encoder is None:
      out[name] = x
      continue
    block, rest = name[len(encoder) + 1:].split("/", 1)
    stacks.setdefault(f"{encoder}/encoderblock/{rest}", {})[int(block.split("_")[1])] = x
  for name, parts in stacks.items():
    out[name] = np.stack([parts[i] for i in range(len(parts))])
  return out


def inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  image = rng.standard_normal((2, IMG, IMG, 3)).astype(np.float32)
  text = rng.integers(2, V, (2, L)).astype(np.int32)
  text[0, -1] = EOS
  text[1, 6:] = EOS  # EOS, then padding with the same id
  return image, text


def run(model, params: dict[str, np.ndarray], image, text) -> dict[str, np.ndarray]:
  zimg, ztxt, out = jax.jit(model.apply)({"params": unflatten(params)}, image, text)
  return {"image_emb": np.asarray(zimg), "text_emb": np.asarray(ztxt), "logit_scale": np.asarray(out["t"]),
          "logit_bias": np.asarray(out["b"])}


def save_params(name: str, params: dict[str, np.ndarray]) -> None:
  arrays = {f"params/{k}": v.astype(ml_dtypes.bfloat16) for k, v in params.items()}  # written as void V2
  np.savez(os.path.join(OUT, name), **arrays)


def check_big_vision_reads(two_towers, name: str, scan: bool, init: dict, params: dict[str, np.ndarray]) -> None:
  """big_vision's own `two_towers.load` reads the file back into the tree of the model it came from,
  with exactly the values the outputs came from (its text tower's loader converts no scan layout)."""
  import ml_collections
  cfg = ml_collections.ConfigDict(model_config(scan))
  flat = flatten(two_towers.load(init, os.path.join(os.path.abspath(OUT), name), cfg))
  assert set(flat) == set(params), name
  assert all(np.array_equal(np.asarray(flat[k], np.float32), params[k]) for k in params), name


FULL = {  # released checkpoints (big_vision's SigLIP demo): file, variant, patch, image size, text length
    "B/16 224": ("webli_en_b16_224_63724782.npz", "B", 16, 224, 64),
    "So400m/14 384": ("webli_en_so400m_384_58765454.npz", "So400m", 14, 384, 64)}


def full_shapes(two_towers) -> None:
  """Name -> shape of every tensor of the released B/16 and So400m/14 models, from big_vision's own
  model on shapes (nothing downloaded); B/16 as unrolled blocks, So400m/14 as scanned ones."""
  out = {}
  for name, (ckpt, variant, patch, size, length) in FULL.items():
    scan = variant == "So400m"
    model = two_towers.Model(image=dict(variant=f"{variant}/{patch}", pool_type="map", scan=scan),
                             text=dict(variant=variant, vocab_size=32_000, scan=scan),
                             out_dim=(None, {"B": 768, "So400m": 1152}[variant]), temperature_init=10.0, bias_init=-10.0)
    image, text = np.zeros((1, size, size, 3), np.float32), np.zeros((1, length), np.int32)
    tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), image, text)["params"]
    out[name] = dict(checkpoint=ckpt, scan=scan, shapes={f"params/{k}": list(v.shape) for k, v in flatten(tree).items()})
  text = json.dumps(out, indent=1)
  text = re.sub(r"\[\s+([\d,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)  # [a,b] on a line
  with open(os.path.join(OUT, "bv_siglip_full_shapes.json"), "w") as f:
    f.write(text + "\n")


def main() -> None:
  if len(sys.argv) != 2:
    raise SystemExit(f"usage: {sys.argv[0]} BIG_VISION_CHECKOUT")
  two_towers = import_two_towers(sys.argv[1])
  loop, scan = two_towers.Model(**model_config(False)), two_towers.Model(**model_config(True))
  image, text = inputs(1)
  init = loop.init(jax.random.PRNGKey(0), image, text)["params"]
  params = randomise({k: np.asarray(v) for k, v in flatten(init).items()}, 2)
  scanned = to_scanned(params)
  scan_init = scan.init(jax.random.PRNGKey(0), image, text)["params"]
  assert {k: v.shape for k, v in scanned.items()} == {k: v.shape for k, v in flatten(scan_init).items()}
  ref, ref_scan = run(loop, params, image, text), run(scan, scanned, image, text)
  for k in ref:
    diff = float(np.max(np.abs(ref[k] - ref_scan[k])))
    assert diff < 1e-5, (k, diff)
    print(f"{k}: scan=True vs scan=False max abs diff {diff:.2e}")
  os.makedirs(OUT, exist_ok=True)
  save_params("bv_siglip_loop.npz", params)
  save_params("bv_siglip_scan.npz", scanned)
  np.savez_compressed(os.path.join(OUT, "bv_siglip.npz"), image=image, text=text, **ref)
  check_big_vision_reads(two_towers, "bv_siglip_loop.npz", False, init, params)
  check_big_vision_reads(two_towers, "bv_siglip_scan.npz", True, scan_init, scanned)
  full_shapes(two_towers)
  print(f"wrote bv_siglip_loop.npz, bv_siglip_scan.npz, bv_siglip.npz ({len(params)} tensors, "
        f"{sum(v.size for v in params.values())} parameters)")


if __name__ == "__main__":
  main()
