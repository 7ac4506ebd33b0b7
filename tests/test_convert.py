"""vlmjax.convert against golden outputs of open_clip / transformers (scripts/make_golden.py); no torch.

The golden outputs use released weights' settings (quick_gelu, tanh gelu + LN eps 1e-6,
open_clip CoCa's legacy CLS mask and pre-norm decoder tokens) and some alternatives;
the model knobs `model.act`, `model.norm_eps`, `model.text.cls_mask|norm_tokens` select them.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vlmjax.convert as convert
from vlmjax import cli, config, models
from vlmjax.config import ConfigError
from vlmjax.convert import io, params, tokenizer
from vlmjax.data import tokenizers

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "convert")
CONFIGS = os.path.join(FIX, "tiny_configs.py")
CHECKPOINTS = {"openclip_clip": ("open_clip", "openclip_clip.safetensors"),
               "openclip_coca": ("open_clip", "openclip_coca.safetensors"),
               "openclip_siglip": ("open_clip", "openclip_siglip.safetensors"),
               "hf_clip": ("hf", "hf_clip"), "hf_siglip": ("hf", "hf_siglip")}
TOL = 1e-4


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def load_cfg(name: str, *overrides):
  return config.load(f"{CONFIGS}:name={name}", overrides)


def abstract_params(cfg):
  graphdef, state = nnx.split(models.abstract(cfg.model))
  return graphdef, nnx.to_pure_dict(state)


def convert_fixture(name: str, cfg=None):
  cfg = cfg or load_cfg(name)
  source, path = CHECKPOINTS[name]
  graphdef, abstract = abstract_params(cfg)
  return cfg, graphdef, convert.convert(source, os.path.join(FIX, path), cfg.model, abstract)


@pytest.fixture(scope="module")
def outputs():
  """outputs(name, *overrides) -> (golden arrays, our outputs); each variant compiled once."""
  cache = {}

  def get(name, *overrides):
    if (name, overrides) not in cache:
      cfg, graphdef, p = convert_fixture(name, load_cfg(name, *overrides))
      ref = dict(np.load(os.path.join(FIX, f"{name}.npz")))

      @jax.jit
      def run(p, image, text):
        out = nnx.merge(graphdef, p)(image, text)
        res = dict(image_emb=out.image_emb, text_emb=out.text_emb, logit_scale=out.logit_scale)
        if out.logit_bias is not None:
          res["logit_bias"] = out.logit_bias
        if out.caption_logits is not None:
          res["logits"] = out.caption_logits[:, :ref["logits"].shape[1]]  # open_clip predicts L - 1
        return res
      cache[(name, overrides)] = ref, jax.tree.map(np.asarray, run(p, ref["image"], ref["text"]))
    return cache[(name, overrides)]
  return get


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_released_settings_match_reference(outputs, name):
  """The fixture configs use released weights' settings: quick_gelu (OpenAI CLIP, HF CLIPModel),
  tanh gelu + LN eps 1e-6 (SigLIP), legacy CLS mask + pre-norm decoder tokens (open_clip CoCa)."""
  ref, ours = outputs(name)
  for key in ours:
    assert rel(ours[key], ref[key].reshape(ours[key].shape)) < TOL, key


@pytest.mark.parametrize("name, overrides, prefix", [
    ("openclip_clip", (("model.act", "gelu"),), "gelu_"),  # LAION-trained open_clip models
    ("openclip_coca", (("model.text.cls_mask", "correct"),), "correct_"),  # open_clip's correct_cls_mask=True
])
def test_other_settings_match_reference(outputs, name, overrides, prefix):
  ref, ours = outputs(name, *overrides)
  released = outputs(name)[1]
  for key in [k[len(prefix):] for k in ref if k.startswith(prefix)]:
    assert rel(ours[key], ref[prefix + key]) < TOL, key
    assert rel(released[key], ref[prefix + key]) > 10 * TOL, f"{key}: the fixture does not tell the settings apart"


def test_siglip_pad_id_embeds_the_tokenizers_pad_where_batches_hold_0():
  """open_clip SigLIP pads with id 1 (= EOS); vlmjax batches pad with 0 and `pad_id=1` embeds 1 there."""
  ref = np.load(os.path.join(FIX, "openclip_siglip.npz"))
  text = ref["text"].copy()
  assert (text[1, 6:] == 1).all()
  text[1, 7:] = 0  # EOS kept, padding as vlmjax's tokenizers write it
  for pad_id, close in ((1, True), (0, False)):
    cfg, graphdef, p = convert_fixture("openclip_siglip", load_cfg("openclip_siglip", ("model.text.pad_id", str(pad_id))))
    emb = nnx.merge(graphdef, p).encode_text(jnp.asarray(text))
    assert (rel(emb, ref["text_emb"]) < TOL) == close, pad_id


def test_coca_cls_mask_changes_only_padded_rows():
  """Legacy and correct CLS masks agree on a text that fills the context (row 0), not on a padded one."""
  ref = np.load(os.path.join(FIX, "openclip_coca.npz"))
  assert rel(ref["text_emb"][0], ref["correct_text_emb"][0]) < TOL
  assert rel(ref["text_emb"][1], ref["correct_text_emb"][1]) > 100 * TOL


def test_coca_kv_cached_decoding_matches_reference():
  """open_clip CoCa (pre-norm decoder tokens) decoded one token at a time through the KV cache gives
  the reference caption logits at every non-padding position."""
  _, graphdef, p = convert_fixture("openclip_coca")
  ref = np.load(os.path.join(FIX, "openclip_coca.npz"))
  n = ref["logits"].shape[1]

  @jax.jit
  def decode(p, image, text_BxN):
    model = nnx.merge(graphdef, p)
    def step(cache, t):
      logits_BxV, cache = model.decode_step(cache, text_BxN[:, t], t)
      return cache, logits_BxV
    cache = model.decode_init(model.caption_context(image), max_len=n)
    return jax.lax.scan(step, cache, jnp.arange(n))[1].swapaxes(0, 1)
  ours_BxNxV = np.asarray(decode(p, ref["image"], ref["text"][:, :n]))
  valid_BxN = ref["text"][:, :n] != 0
  assert rel(ours_BxNxV[valid_BxN], ref["logits"][valid_BxN]) < TOL


@pytest.mark.parametrize("key, value, match", [
    ("model.act", "relu", "model.act must be one of gelu|gelu_tanh|quick_gelu, got 'relu'"),
    ("model.text.cls_mask", "shifted", "model.text.cls_mask must be one of correct|legacy, got 'shifted'"),
    ("model.norm_eps", "0.0", "model.norm_eps must be a positive float"),
])
def test_unknown_knob_values_are_errors(key, value, match):
  cfg = load_cfg("openclip_coca", (key, value))
  with pytest.raises(ValueError, match=match):
    models.abstract(cfg.model)


@pytest.mark.parametrize("override, tensor", [
    ("model.text.width=32", "transformer.resblocks.0.attn.in_proj_bias"),
    ("model.vision.depth=1", "visual.transformer.resblocks.1.attn.in_proj_bias"),
    ("model.vision.patch_bias=True", "vision.embed.bias"),
])
def test_shape_mismatch_names_first_tensor(override, tensor):
  cfg = load_cfg("openclip_clip", tuple(override.split("=")))
  with pytest.raises(ConfigError, match=tensor.replace(".", r"\.")) as e:
    convert_fixture("openclip_clip", cfg)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, scan", [(n, s) for n in ("openclip_clip", "openclip_coca", "hf_siglip")
                                         for s in (False, True)] + [("openclip_siglip", False)])
def test_round_trip(name, scan):
  """reference -> ours -> reference and ours -> reference -> ours are the identity (scanned or not)."""
  cfg = load_cfg(name, ("model.scan", str(scan)))
  source, path = CHECKPOINTS[name]
  state = io.read(os.path.join(FIX, path))
  family = convert.family_of(source, path, state)
  _, abstract = abstract_params(cfg)
  ours = params.to_ours(state, family, cfg.model, abstract)
  back = params.to_ref(ours, family, cfg.model)
  assert list(back) and set(back) == set(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  again = params.to_ours(back, family, cfg.model, abstract)
  jax.tree.map(np.testing.assert_array_equal, again, ours)


def test_openclip_siglip_full_size_maps_onto_siglip_b16():
  """Every tensor of open_clip's real ViT-B-16-SigLIP state dict (names and shapes stored by
  scripts/make_golden.py) maps onto one of configs/siglip_b16.py's parameters with its shape, and
  every parameter gets one (to_ours raises at the first missing, left-over or misshapen tensor)."""
  import json
  with open(os.path.join(FIX, "openclip_siglip_b16_shapes.json")) as f:
    shapes = json.load(f)["shapes"]
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}  # shape-only stand-ins
  assert convert.family_of("open_clip", "ViT-B-16-SigLIP", state) == "open_clip_siglip"
  cfg = config.load(os.path.join(os.path.dirname(FIX), "..", "..", "configs", "siglip_b16.py"))
  assert convert.export_family("open_clip", cfg.model) == "open_clip_siglip"  # what --reverse writes
  _, abstract = abstract_params(cfg)
  ours = params.to_ours(state, "open_clip_siglip", cfg.model, abstract)
  assert sum(x.size for x in jax.tree.leaves(ours)) == sum(int(np.prod(s)) for s in shapes.values())


def test_vocab_offset_inserts_pad_row():
  cfg = load_cfg("openclip_coca", ("model.text.vocab_size", "101"))
  state = io.read(os.path.join(FIX, "openclip_coca.safetensors"))
  _, abstract = abstract_params(cfg)
  ours = params.to_ours(state, "open_clip", cfg.model, abstract, vocab_offset=1)
  emb = ours["text"]["token_embed"]["embedding"]
  assert np.array_equal(emb[0], emb[1]) and np.array_equal(emb[1:], state["text.token_embedding.weight"])
  assert not ours["decoder"]["head"]["kernel"][:, 0].any()
  back = params.to_ref(ours, "open_clip", cfg.model, vocab_offset=1)
  np.testing.assert_array_equal(back["text.token_embedding.weight"], state["text.token_embedding.weight"])


@pytest.mark.parametrize("fixture", ["openclip_coca", "openclip_coca_lengths"])
def test_coca_with_the_vocabulary_shift_equals_open_clip_on_captions_of_every_length(fixture):
  """open_clip CoCa converted with vocab_offset=1 (ids shifted up by one, 0 = padding, as the open_clip
  tokenizer route writes them) equals open_clip's text embedding and caption logits on captions of every
  length (EOS at each position, the full context included): the legacy CLS mask shows the class token the
  first padding position, which must embed as open_clip's id 0 (formerly an all-zero row: off by 2-3e-2)."""
  ref = np.load(os.path.join(FIX, f"{fixture}.npz"))
  cfg = load_cfg("openclip_coca", ("model.text.vocab_size", "101"))
  graphdef, abstract = abstract_params(cfg)
  p = params.to_ours(io.read(os.path.join(FIX, "openclip_coca.safetensors")), "open_clip", cfg.model, abstract,
                     vocab_offset=1)
  text = ref["text"]
  after_eos = np.cumsum(np.cumsum(text == text.max(), axis=1), axis=1) > 1
  assert not after_eos[0].any() if fixture == "openclip_coca" else after_eos.sum(1).tolist() == list(range(10, -1, -1))
  ours = np.where(after_eos, 0, text + 1)
  out = nnx.merge(graphdef, p)(jnp.asarray(ref["image"]), jnp.asarray(ours))
  assert rel(out.text_emb, ref["text_emb"]) < 1e-5 and rel(out.image_emb, ref["image_emb"]) < 1e-5
  logits = np.asarray(out.caption_logits)[:, :ref["logits"].shape[1], 1:]  # id 0 (padding) has no reference logit
  assert rel(logits, ref["logits"]) < 1e-5


def test_a_trained_run_exports_to_open_clip_names(tmp_path, capsys):
  """`convert --reverse --checkpoint WORKDIR [--step N]`: a run trained from converted open_clip weights
  exports the step's parameters under open_clip's names and shapes (0-d logit_scale included); a
  missing step is one line and writes nothing."""
  from vlmjax import train
  from conftest import ROOT
  spec = f"{CONFIGS}:name=openclip_clip"
  cfg = config.load(spec, (("total_steps", "2"), ("ckpt_every", "1"), ("batch_size", "8"),
                           ("model.text.vocab_size", "259")))  # the `bytes` tokenizer's 259 ids
  train.train(cfg, str(tmp_path / "run"))
  out = str(tmp_path / "back.safetensors")
  argv = ["convert", "--from", "open_clip", "--reverse", "--checkpoint", str(tmp_path / "run"), "--config",
          str(tmp_path / "run" / "config.json"), "--out", out]
  assert cli.main([*argv, "--step", "5"]) == 2 and "no checkpoint at step 5" in capsys.readouterr().err
  assert not os.path.exists(out)
  assert cli.main([*argv, "--step", "1"]) == 0 and "from step 1 of" in capsys.readouterr().out
  original = io.read(os.path.join(FIX, "openclip_clip.safetensors"))
  exported = io.read(out)
  assert exported["token_embedding.weight"].shape == (259, 64) and exported["logit_scale"].shape == ()
  exported.pop("token_embedding.weight"), original.pop("token_embedding.weight")
  assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in original.items()}
  from vlmjax import train_state
  _, ours, _ = train_state.restore_params(str(tmp_path / "run"), cfg, 1)
  np.testing.assert_array_equal(exported["logit_scale"], np.asarray(ours["logit_scale"]))
  np.testing.assert_array_equal(exported["ln_final.weight"], np.asarray(ours["text"]["ln"]["scale"]))


def test_cli_convert_load_and_reverse(tmp_path, capsys):
  out = str(tmp_path / "hf_clip")
  spec = f"{CONFIGS}:name=hf_clip"
  assert cli.main(["convert", "--from", "hf", "--checkpoint", os.path.join(FIX, "hf_clip"), "--config", spec,
                   "--out", out]) == 0
  assert "init_from" in capsys.readouterr().out
  cfg, _, expected = convert_fixture("hf_clip")
  _, abstract = abstract_params(cfg)
  loaded = convert.load_params(out, abstract)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, expected)
  # `vlmjax eval --workdir OUT` restores converted weights as step 0, with the config convert used.
  from vlmjax import train_state
  from vlmjax.evals import commands
  run_cfg = commands.load_config(out, [])
  _, params, step = train_state.restore_params(out, run_cfg, None)
  assert step == 0
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, expected)
  # Training from weights converted with a tokenizer needs it (or a fresh token embedding).
  from vlmjax import train_state
  run_cfg.init_from, run_cfg.data.train.tokenizer = out, "bytes"
  train_state.check_init_tokenizer(run_cfg)  # this checkpoint came without one
  with open(os.path.join(out, "tokenizer.json"), "w") as f:
    f.write("{}")  # as `--tokenizer` writes it
  run_cfg.init_from, run_cfg.data.train.tokenizer = out, "bytes"
  with pytest.raises(ConfigError, match=r"was converted with its tokenizer; train with "
                                        r"--config.data.train.tokenizer=hf:.*tokenizer.json"):
    train_state.check_init_tokenizer(run_cfg)
  run_cfg.data.train.tokenizer = f"hf:{out}/tokenizer.json"
  train_state.check_init_tokenizer(run_cfg)
  run_cfg.data.train.tokenizer, run_cfg.init_reinit = "bytes", "text.token_embed"
  train_state.check_init_tokenizer(run_cfg)
  exported = str(tmp_path / "back.safetensors")
  assert cli.main(["convert", "--from", "hf", "--reverse", "--checkpoint", out, "--config", spec,
                   "--out", exported]) == 0
  original = io.read(os.path.join(FIX, "hf_clip"))
  again = io.read(exported)
  assert set(again) == set(original)
  for k in original:  # shapes as the reference's: a 0-d logit_scale stays 0-d (formerly written as (1,))
    assert again[k].shape == original[k].shape, (k, again[k].shape, original[k].shape)
    np.testing.assert_array_equal(again[k], original[k], err_msg=k)


def test_openclip_timm_tower_without_map_head_is_refused():
  state = {"visual.trunk.blocks.0.norm1.weight": np.ones(4), "text.text_projection.bias": np.ones(4)}
  with pytest.raises(ConfigError, match="attn_pool") as e:
    convert.family_of("open_clip", "x.safetensors", state)
  assert "\n" not in str(e.value)


def test_cli_errors_are_one_line(tmp_path, capsys):
  args = ["convert", "--from", "open_clip", "--checkpoint", os.path.join(FIX, "openclip_clip.safetensors"),
          "--config", f"{CONFIGS}:name=hf_siglip", "--out", str(tmp_path / "x")]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "logit_bias" in err  # SigLIP's layout, CLIP's weights
  tokenized = [*args, "--tokenizer", f"open_clip:{os.path.join(FIX, 'bpe_tiny.txt.gz')}"]
  assert cli.main(tokenized) == 2 and capsys.readouterr().err.count("\n") == 1
  assert os.listdir(tmp_path) == []  # the tokenizer it had written went with the rest: nothing half-written
  args[4] = str(tmp_path / "missing.pt")
  assert cli.main(args) == 2
  assert "does not exist" in capsys.readouterr().err


def test_openclip_bpe_tokenizer(tmp_path):
  """open_clip's BPE file as tokenizer.json gives open_clip's ids (shifted by one so 0 is padding)."""
  path = tokenizer.openclip_tokenizer_json(os.path.join(FIX, "bpe_tiny.txt.gz"), str(tmp_path / "tok.json"))
  tok = tokenizers.build(f"hf:{path}")
  golden = np.load(os.path.join(FIX, "bpe_tiny.npz"))
  assert tok.shift == 1
  for text, ref in zip(golden["texts"], golden["ids"]):
    n = int(np.argmax(ref == ref.max())) + 1  # through the end-of-text id, the largest
    ours = tok.encode(str(text), len(ref))
    np.testing.assert_array_equal(ours[:n] - 1, ref[:n], err_msg=str(text))
    assert not ours[n:].any()


@pytest.mark.parametrize("form", ["bpe_gz", "converted_json"])
def test_openclip_tokenizer_cleans_web_captions_as_open_clip_does(tmp_path, form):
  """Golden ids from open_clip 3.3's SimpleTokenizer (scripts/make_golden.py openclip_clean): entities,
  curly quotes, ligatures, fullwidth, mojibake, control characters, a BOM, Greek final sigma, mixed
  scripts, emoji, odd whitespace, the empty caption and one truncated at the context."""
  bpe = os.path.join(FIX, "bpe_tiny.txt.gz")
  path = bpe if form == "bpe_gz" else tokenizer.openclip_tokenizer_json(bpe, str(tmp_path / "tok.json"))
  tok = tokenizers.build(f"open_clip:{path}")
  golden = np.load(os.path.join(FIX, "openclip_clean.npz"))
  assert golden["ids"][:, -1].any() and tok.shift == 1  # one caption fills the context
  for text, ref in zip(golden["texts"], golden["ids"]):
    ours = tok.encode(str(text), len(ref))
    np.testing.assert_array_equal(np.where(ours > 0, ours - 1, 0), ref, err_msg=repr(str(text)))


# open_clip 3.3.0's parameter counts (49,408-token vocabulary), computed once with /work/torchenv:
# sum(p.numel() for p in open_clip.CLIP|CoCa(**open_clip.get_model_config(NAME)).parameters());
# openclip_coca_b16 is coca_ViT-B-32 with vision_cfg.patch_size=16. Activation changes no count.
OPEN_CLIP_PARAMS = {"openclip_vit_b32.py:act=quick_gelu": 151_277_313, "openclip_vit_l14.py": 427_616_513,
                    "openclip_coca_l14.py": 638_450_177, "openclip_coca_b16.py": 251_903_489}


@pytest.mark.parametrize("spec", list(OPEN_CLIP_PARAMS))
def test_openclip_configs_have_openclip_parameter_counts(spec):
  cfg = config.load(os.path.join(os.path.dirname(FIX), "..", "..", "configs", spec))
  count = sum(x.size for x in jax.tree.leaves(nnx.state(models.abstract(cfg.model), nnx.Param)))
  assert count == OPEN_CLIP_PARAMS[spec]


def test_openclip_config_act_argument():
  path = os.path.join(os.path.dirname(FIX), "..", "..", "configs", "openclip_vit_b32.py")
  assert config.load(path).model.act == "gelu"
  with pytest.raises(ConfigError, match=r"act must be one of gelu\|quick_gelu, got .gelu_tanh."):
    config.load(f"{path}:act=gelu_tanh")
