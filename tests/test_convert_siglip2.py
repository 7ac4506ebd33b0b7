"""SigLIP 2 against golden outputs of transformers (scripts/make_golden_siglip2.py, scripts/make_param_counts.py);
no torch.

HF Siglip2Model (NaFlex) converts for square images at its native grid, where it is our ViT; the Gemma
tokenizer (`gemma:`) gives transformers' ids; configs/siglip2_b16.py and configs/siglip_so400m14.py
have the released models' parameter counts.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

import vlmjax.convert as convert
from vlmjax import config, info, models
from vlmjax.config import ConfigError
from vlmjax.convert import io, params
from vlmjax.data import tokenizers

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "convert")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT = os.path.join(FIX, "hf_siglip2")
TOKENIZER = os.path.join(FIX, "gemma_tiny.model")
POSEMB, PATCH = convert.SIGLIP2_POSEMB, convert.SIGLIP2_PATCH


def load_cfg(*overrides):
  return config.load(f"{os.path.join(FIX, 'tiny_configs.py')}:name=hf_siglip2", overrides)


def abstract_params(cfg):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, nnx.to_pure_dict(state)


def test_reference_was_fed_the_images_we_see():
  """pixel_values are our images' patches flattened (row, column, channel), as our patch kernel reads
  them; the full native 4x4 grid, nothing masked (where the reference's position-embedding resize is
  the identity: checked by the maker, to 0.0)."""
  ref = np.load(os.path.join(FIX, "hf_siglip2.npz"))
  image = ref["image"]
  B, S, p = image.shape[0], image.shape[1], 8
  g = S // p
  patches = image.reshape(B, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, g * g, p * p * 3)
  np.testing.assert_array_equal(ref["pixel_values"], patches)
  assert (ref["spatial_shapes"] == g).all() and (ref["pixel_attention_mask"] == 1).all()


def test_hf_siglip2_embeddings_equal_reference():
  ref = dict(np.load(os.path.join(FIX, "hf_siglip2.npz")))
  cfg = load_cfg()
  assert convert.family_of("hf", CHECKPOINT, io.read(CHECKPOINT)) == "hf_siglip2"
  graphdef, abstract = abstract_params(cfg)
  p = convert.convert("hf", CHECKPOINT, cfg.model, abstract)
  out = jax.jit(lambda p, image, text: nnx.merge(graphdef, p)(image, text))(p, ref["image"], ref["text"])
  assert (ref["text"][1, 7:] == 0).all() and ref["text"][0, -1] == 1  # padded with Gemma's 0 / filled
  for key in ("image_emb", "text_emb", "logit_scale", "logit_bias"):
    ours = np.asarray(getattr(out, key))
    assert np.max(np.abs(ours - ref[key].reshape(ours.shape))) < 1e-5, key


@pytest.mark.parametrize("scan", [False, True])
def test_hf_siglip2_round_trip(scan):
  cfg = load_cfg(("model.scan", str(scan)))
  state = io.read(CHECKPOINT)
  _, abstract = abstract_params(cfg)
  ours = params.to_ours(state, "hf_siglip2", cfg.model, abstract)
  np.testing.assert_array_equal(ours["vision"]["embed"]["kernel"], state[PATCH].T)  # Linear: a transpose
  back = params.to_ref(ours, "hf_siglip2", cfg.model)
  assert set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_siglip2_at_another_grid_is_one_line():
  cfg = load_cfg(("model.image_size", "40"))
  _, abstract = abstract_params(cfg)
  with pytest.raises(ConfigError, match=r"native grid.*model.image_size=32.*NaFlex encoder") as e:
    convert.convert("hf", CHECKPOINT, cfg.model, abstract)
  assert "\n" not in str(e.value) and "4x4" in str(e.value) and "5x5" in str(e.value)


def test_siglip2_with_a_non_square_grid_is_one_line():
  state = io.read(CHECKPOINT)
  state[POSEMB] = np.zeros((12, 64), np.float32)
  with pytest.raises(ConfigError, match=r"num_patches=12, not a square grid; supported: square images") as e:
    convert.family_of("hf", CHECKPOINT, state)
  assert "\n" not in str(e.value)


def test_siglip2_b16_config_takes_naflex_b16_at_its_native_grid():
  """configs/siglip2_b16.py fits google/siglip2-base-patch16-naflex's 256-patch table (a 16x16 grid at
  256 px), told apart from a SiglipModel by its 2-D patch Linear when there is no config.json."""
  cfg = config.load(os.path.join(ROOT, "configs", "siglip2_b16.py"))
  state = {POSEMB: np.broadcast_to(np.float32(0), (256, 768)), PATCH: np.broadcast_to(np.float32(0), (768, 768)),
           "vision_model.head.probe": np.zeros((1, 1, 768), np.float32)}
  assert convert.family_of("hf", "/nowhere/model.safetensors", state) == "hf_siglip2"
  convert.check_siglip2("naflex", state, cfg.model)
  state[PATCH] = np.broadcast_to(np.float32(0), (768, 3, 16, 16))
  assert convert.family_of("hf", "/nowhere/model.safetensors", state) == "hf_siglip"


def _ascii_lower_is_lower(text: str) -> bool:
  return text.translate(tokenizers.ASCII_LOWER) == text.lower()


def test_gemma_tokenizer_gives_transformers_ids():
  """`gemma:` = transformers' GemmaTokenizer (add_bos_token=False, add_eos_token=True, padded to the
  context, truncated with eos kept) on A-Z-lower-cased text, id for id: ASCII and non-ASCII capitals,
  byte-fallback scripts, whitespace runs, digits, <mask>, the empty text, texts filling the context
  exactly and past it. transformers' Siglip2Tokenizer lower-cases all of Unicode: equal where that is
  the same text, different where non-ASCII capitals are."""
  golden = np.load(os.path.join(FIX, "gemma_tiny.npz"))
  tok = tokenizers.build(f"gemma:{TOKENIZER}")
  assert (tok.shift, tok.bos, tok.eos, tok.vocab_size) == (0, None, 1, 400)
  L = golden["ids"].shape[1]
  assert golden["ids"][:, -1].tolist().count(1) >= 2 and (golden["ids"][:, -1] == 0).any()  # filled, truncated, padded
  for text, ids, siglip2 in zip(golden["texts"].tolist(), golden["ids"], golden["siglip2_ids"]):
    ours = tok.encode(text, L)
    np.testing.assert_array_equal(ours, ids, err_msg=repr(text))
    assert np.array_equal(ours, siglip2) == _ascii_lower_is_lower(text), repr(text)
  assert not all(_ascii_lower_is_lower(t) for t in golden["texts"].tolist())


def test_gemma_tokenizer_keeps_control_token_text_and_adds_no_bos():
  golden = np.load(os.path.join(FIX, "gemma_tiny.npz"))
  text, hf = str(golden["literal_text"]), golden["literal_hf_ids"]
  ours = tokenizers.build(f"gemma:{TOKENIZER}").encode(text, len(hf))
  n = int(np.count_nonzero(ours))
  assert ours[n - 1] == 1 and 1 not in ours[:n - 1] and 0 not in ours[:n]  # as sentencepiece (big_vision)
  assert not np.array_equal(ours, hf)  # transformers reads "<eos>" / "<pad>" as the special ids
  plain = tokenizers.build(f"sentencepiece:{TOKENIZER}").encode("a photo of a cat", 16)
  gemma = tokenizers.build(f"gemma:{TOKENIZER}").encode("A photo of a cat", 16)
  assert plain[0] == 2 and np.array_equal(plain[1:], gemma[:-1])  # sentencepiece: adds Gemma's <bos>
  assert tokenizers.build(f"gemma:{TOKENIZER}").decode(gemma) == "a photo of a cat"


@pytest.mark.parametrize("spec, match", [
    ("gemma:/nonexistent/tokenizer.model", "does not exist"),
    (f"gemma:{os.path.join(FIX, 'hf_siglip2', 'config.json')}", "could not be read"),
    ("gemma", "is unknown; valid: .*gemma:MODEL_PATH"),
])
def test_gemma_spec_errors_are_one_line(spec, match):
  with pytest.raises(ConfigError, match=match) as e:
    tokenizers.build(spec)
  assert "\n" not in str(e.value)


def _reference_counts() -> list[tuple[str, dict]]:
  with open(os.path.join(FIX, "reference_param_counts.json")) as f:
    refs = json.load(f)["configs"]
  return [(name, ref) for name, entries in refs.items() for ref in entries]


@pytest.mark.parametrize("name, ref", _reference_counts(), ids=lambda x: x if isinstance(x, str) else x["cls"])
def test_configs_have_the_reference_parameter_counts(name, ref):
  """Per tower and in total, from abstract params (jax.eval_shape: nothing allocated)."""
  c = info.param_counts(config.load(os.path.join(ROOT, "configs", f"{name}.py")))
  ours = dict(vision=c["vision"] + c.get("image_proj", 0), text=c["text"] + c.get("text_proj", 0),
              logit=c["logit_scale"] + c["logit_bias"], total=c.get("towers", c["total"]))  # siglip2_b16: + decoder
  assert ours == {k: ref[k] for k in ours}, ref["model"]
