"""vlmjax.convert.big_vision against big_vision's own two-towers SigLIP (scripts/make_golden_big_vision.py).

The fixtures are a toy SigLIP saved as big_vision saves it (`params/` names, bfloat16 stored as
void), unrolled (`bv_siglip_loop.npz`) and scanned (`bv_siglip_scan.npz`), and big_vision's outputs
on two captions padded as its SigLIP tokenizers pad (id 1 after a sticky EOS) in `bv_siglip.npz`.
The vlmjax side is tests/fixtures/convert/tiny_configs.py:name=hf_siglip with `pad_id=1`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import nnx

import vlmjax.convert
from vlmjax import config, models
from vlmjax.convert import big_vision, params
from vlmjax.errors import ConfigError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "convert")
CONFIGS = os.path.join(FIX, "tiny_configs.py")
FILES = {"loop": os.path.join(FIX, "bv_siglip_loop.npz"), "scan": os.path.join(FIX, "bv_siglip_scan.npz")}
TOL = 1e-5  # max abs difference from big_vision's outputs
KEYS = ("image_emb", "text_emb", "logit_scale", "logit_bias")


def load_cfg(*overrides):
  return config.load(f"{CONFIGS}:name=hf_siglip", (("model.text.pad_id", "1"), *overrides))


def convert(path: str, cfg):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, params.to_ours(big_vision.read(path), "hf_siglip", cfg.model, nnx.to_pure_dict(state),
                                  where=f"checkpoint {path!r}")


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(FIX, "bv_siglip.npz")))


@pytest.fixture(scope="module")
def outputs(golden):
  """outputs(variant, scan) -> our outputs on the golden inputs, plus `text_emb_pad0`: the captions
  padded with 0, as vlmjax's batches are."""
  cache = {}

  def get(variant: str, scan: bool):
    if (variant, scan) not in cache:
      graphdef, p = convert(FILES[variant], load_cfg(("model.scan", str(scan))))

      @jax.jit
      def run(p, image, text, text_pad0):
        model = nnx.merge(graphdef, p)
        out = model(image, text)
        return dict(image_emb=out.image_emb, text_emb=out.text_emb, logit_scale=out.logit_scale,
                    logit_bias=out.logit_bias, text_emb_pad0=model.encode_text(text_pad0))
      text = golden["text"]
      after_eos = np.cumsum(np.cumsum(text == 1, axis=1), axis=1) > 1
      cache[(variant, scan)] = jax.tree.map(np.asarray, run(p, golden["image"], text, np.where(after_eos, 0, text)))
    return cache[(variant, scan)]
  return get


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64).reshape(np.shape(a)))))


@pytest.mark.parametrize("variant, scan", [("loop", False), ("scan", True)])
def test_matches_big_vision(outputs, golden, variant, scan):
  """Unrolled big_vision blocks into an unrolled vlmjax model, scanned into a scanned one (both files read
  to identical state dicts: test_scanned_equals_unrolled_and_has_siglip_names): big_vision's normalised
  embeddings, exp(t) and b to 1e-5; captions padded with 0 embed as big_vision's padded with 1."""
  assert (golden["text"][1, 6:] == 1).all() and (golden["text"][0] != 1).sum() == golden["text"].shape[1] - 1
  ours = outputs(variant, scan)
  for key in KEYS:
    assert max_diff(ours[key], golden[key]) < TOL, (key, max_diff(ours[key], golden[key]))
  assert max_diff(ours["text_emb_pad0"], golden["text_emb"]) < TOL


def test_pad_id_matters(golden):
  """With pad_id=0 the 0-padded caption differs from big_vision's: the fixture tells the settings apart."""
  cfg = load_cfg(("model.text.pad_id", "0"))
  graphdef, p = convert(FILES["loop"], cfg)
  text = golden["text"].copy()
  text[1, 7:] = 0
  emb = jax.jit(lambda p, text: nnx.merge(graphdef, p).encode_text(text))(p, text)
  assert max_diff(emb[0], golden["text_emb"][0]) < TOL and max_diff(emb[1], golden["text_emb"][1]) > 100 * TOL


def test_scanned_equals_unrolled_and_has_siglip_names():
  loop, scan = big_vision.read(FILES["loop"]), big_vision.read(FILES["scan"])
  assert set(loop) == set(scan)
  for k in loop:
    np.testing.assert_array_equal(loop[k], scan[k], err_msg=k)
    assert loop[k].dtype == np.float32, k
  assert loop["vision_model.head.attention.in_proj_weight"].shape == (192, 64)
  assert loop["vision_model.embeddings.patch_embedding.weight"].shape == (64, 3, 8, 8)
  assert loop["logit_scale"].shape == loop["logit_bias"].shape == (1,)
  assert sum(k.startswith("text_model.encoder.layers.1.") for k in loop) == 16


def raw(variant: str = "loop") -> dict[str, np.ndarray]:
  """The fixture's arrays as stored (names with `params/`, bfloat16 as void)."""
  with np.load(FILES[variant]) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.parametrize("layout", ["bare_float32", "opt_target", "with_optimizer_state"])
def test_name_prefixes_and_dtypes(tmp_path, layout):
  """Bare names (float32), old Flax-optimiser `opt/target/` names, and a training checkpoint whose
  optimiser state sits beside `params/` (left out, as big_vision's loader does) read alike."""
  arrays = {k.removeprefix("params/"): v.view(np.uint16).astype(np.uint32) << 16 for k, v in raw().items()}
  arrays = {k: v.view(np.float32) for k, v in arrays.items()}  # bfloat16 bits -> the same float32 values
  if layout == "opt_target":
    arrays = {f"opt/target/{k}": v for k, v in arrays.items()}
  elif layout == "with_optimizer_state":
    arrays = {**{f"params/{k}": v for k, v in arrays.items()}, "opt/0/mu/img/pos_embedding": np.zeros(3, np.float32)}
  path = str(tmp_path / "ckpt.npz")
  np.savez(path, **arrays)
  expected, got = big_vision.read(FILES["loop"]), big_vision.read(path)
  assert set(got) == set(expected)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def _drop(name):
  return lambda a: {k: v for k, v in a.items() if k != name}


VIT = {"params/embedding/kernel": np.zeros((8, 8, 3, 64), np.float32), "params/cls": np.zeros((1, 1, 64), np.float32),
       "params/Transformer/encoderblock_0/LayerNorm_0/scale": np.ones(64, np.float32),
       "params/head/kernel": np.zeros((64, 10), np.float32)}


@pytest.mark.parametrize("variant, edit, match", [
    ("loop", lambda a: {**a, "params/img/head/kernel": np.zeros((64, 64), np.float32)},
     r"tensor 'img/head/kernel' \(64, 64\) has no place in a SigLIP two-towers model"),
    ("loop", lambda a: {**a, "params/img/cls": np.zeros((1, 1, 64), np.float32)}, r"tensor 'img/cls'"),
    ("loop", _drop("params/txt/head/bias"), r"lacks tensor 'txt/head/bias'"),
    ("loop", _drop("params/img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel"),
     r"lacks tensor 'img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel'"),
    ("scan", _drop("params/txt/Encoder_0/encoderblock/LayerNorm_1/scale"),
     r"lacks tensor 'txt/Encoder_0/encoderblock_0/LayerNorm_1/scale'"),
    ("scan", lambda a: {**a, "params/img/Transformer/encoderblock_0/LayerNorm_0/scale": np.ones(64, np.float32)},
     r"holds both scanned 'img/Transformer/encoderblock/LayerNorm_0/scale' and unrolled"),
    ("loop", lambda a: {**a, "params/img/embedding/kernel": np.zeros((192, 64), np.float32)},
     r"tensor 'img/embedding/kernel' is \(192, 64\); a 4-d array"),
    ("loop", lambda a: VIT, r"is not a two-towers \(SigLIP\) model: no img/ or txt/ tensors \(found 'Transformer/"),
])
def test_bad_checkpoints_are_one_line_errors(tmp_path, variant, edit, match):
  path = str(tmp_path / "bad.npz")
  np.savez(path, **edit(raw(variant)))
  with pytest.raises(ConfigError, match=match) as e:
    big_vision.read(path)
  assert "\n" not in str(e.value) and path in str(e.value)


def test_a_text_tower_without_head_converts_with_text_proj_none(tmp_path):
  """big_vision's text `out_dim=None` (So400m/16-i18n): no `txt/head`, and model.text_proj="none" takes it."""
  path = str(tmp_path / "headless.npz")
  np.savez(path, **{k: v for k, v in raw().items() if not k.startswith("params/txt/head/")})
  state = big_vision.read(path)
  assert not any(k.startswith("text_model.head.") for k in state) and len(state) == 86
  _, p = convert(path, load_cfg(("model.text_proj", "none")))
  assert "text_proj" not in p and p["text"]["ln"]["scale"].shape == (64,)
  with pytest.raises(ConfigError, match=r"lacks tensor 'text_model\.head\."):
    convert(path, load_cfg())


def test_unreadable_files_are_one_line_errors(tmp_path):
  np.save(tmp_path / "one.npy", np.zeros(3))
  np.savez(tmp_path / "objects.npz", a=np.array([{}], dtype=object))
  (tmp_path / "text.npz").write_bytes(b"not a zip")
  (tmp_path / "empty.npz").write_bytes(b"")
  for name in ("one.npy", "objects.npz", "text.npz", "empty.npz"):
    path = tmp_path / name
    with pytest.raises(ConfigError, match="cannot be read as an .npz") as e:
      big_vision.read(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)
  with pytest.raises(ConfigError, match="does not exist"):
    big_vision.read(str(tmp_path / "missing.npz"))


def test_a_config_of_another_size_is_a_one_line_error():
  """The checkpoint read, a config one layer deeper: `params.to_ours` names the tensor it lacks."""
  with pytest.raises(ConfigError, match=r"lacks tensor 'vision_model\.encoder\.layers\.2\.") as e:
    convert(FILES["scan"], load_cfg(("model.vision.depth", "3")))
  assert "\n" not in str(e.value) and "bv_siglip_scan.npz" in str(e.value)


SO400M = (("model.image_size", "378"), ("model.embed_dim", "1152"), ("model.vision.patch_size", "14"),
          *((f"model.{tower}.{k}", v) for tower in ("vision", "text")
            for k, v in (("width", "1152"), ("depth", "27"), ("heads", "16"), ("mlp_dim", "4304"))))


@pytest.mark.parametrize("name, overrides", [("B/16 224", ()), ("So400m/14 384", SO400M)])
def test_released_checkpoints_map_onto_siglip_configs(name, overrides):
  """Every tensor of big_vision's released B/16 (unrolled) and So400m/14 (scanned) SigLIP checkpoints
  (names and shapes from big_vision's model, stored by scripts/make_golden_big_vision.py) finds its
  parameter of configs/siglip_b16.py (with So400m/14's sizes at 378 px: the 27x27 grid its 384 px
  conv reads), with its shape, and every parameter gets one."""
  import json
  with open(os.path.join(FIX, "bv_siglip_full_shapes.json")) as f:
    entry = json.load(f)[name]
  stand_ins = {k.removeprefix("params/"): np.broadcast_to(np.float32(0), s) for k, s in entry["shapes"].items()}
  state = big_vision.to_hf(stand_ins, entry["checkpoint"])
  cfg = config.load(os.path.join(FIX, "..", "..", "..", "configs", "siglip_b16.py"), (*overrides, ("model.scan", "False")))
  _, abstract = nnx.split(models.abstract(cfg.model))
  ours = params.to_ours(state, "hf_siglip", cfg.model, nnx.to_pure_dict(abstract))
  assert sum(x.size for x in jax.tree.leaves(ours)) == sum(int(np.prod(s)) for s in entry["shapes"].values())


def test_the_cli_converts_a_big_vision_npz_and_refuses_others_in_one_line(tmp_path, capsys):
  """`vlmjax convert --from big_vision`: the params equal the in-process conversion; a plain ViT
  classifier's .npz is one line, exit 2, nothing written; --reverse to a .npz is refused."""
  from vlmjax import cli
  out = str(tmp_path / "bv")
  argv = ["convert", "--from", "big_vision", "--config", f"{CONFIGS}:name=hf_siglip", "--config.model.text.pad_id=1"]
  assert cli.main([*argv, "--checkpoint", FILES["loop"], "--out", out]) == 0
  cfg = load_cfg()
  graphdef, abstract = nnx.split(models.abstract(cfg.model))
  ours = vlmjax.convert.load_params(out, nnx.to_pure_dict(abstract))
  _, direct = convert(FILES["loop"], cfg)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  vit = str(tmp_path / "vit.npz")
  np.savez(vit, **{"params/Transformer/encoder_norm/scale": np.ones(4, np.float32), "params/head/kernel": np.ones((4, 2))})
  capsys.readouterr()
  assert cli.main([*argv, "--checkpoint", vit, "--out", str(tmp_path / "x")]) == 2
  assert capsys.readouterr().err.count("\n") == 1 and not os.path.exists(tmp_path / "x")
  assert cli.main([*argv, "--checkpoint", out, "--reverse", "--out", str(tmp_path / "y.safetensors")]) == 2
  assert "not a big_vision .npz" in capsys.readouterr().err
