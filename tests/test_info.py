import json
import os
import subprocess
import sys

import pytest

from vlmjax import config, info

from conftest import ROOT


def test_param_counts_clip_b16_matches_published_size():
  counts = info.param_counts(config.load(os.path.join(ROOT, "configs/clip_b16.py")))
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
  assert counts["total"] == 149_620_737  # open_clip's ViT-B-16, layer for layer
  assert counts["vision"] == 85_799_424  # open_clip's visual tower without proj (393,216)


@pytest.mark.parametrize("name, total", [
    ("openclip_coca_b16", 251_903_489),  # open_clip 3.3 coca_ViT-B-32 with patch 16
    ("siglip_b16", 203_155_970),         # transformers SiglipModel (google/siglip-base-patch16-224)
])
def test_param_counts_match_reference_implementations(name, total):
  assert info.param_counts(config.load(os.path.join(ROOT, f"configs/{name}.py")))["total"] == total


def test_info_cli_json():
  proc = subprocess.run([sys.executable, "-m", "vlmjax.cli", "info", "--config", "configs/coca_tiny.py", "--json"],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert set(out["params"]) >= {"vision", "text", "decoder", "caption_pool", "contrastive_pool", "total"}
  # forward+backward is about 3x the forward matmuls: 2 * params * tokens is a lower bound of the forward.
  assert 3 * 2 * out["params"]["vision"] * 16 < out["train_flops_per_example"] < 1e10


@pytest.mark.parametrize("size, image, decoder, total", [
    ("base", 86e6, 297e6, 383e6), ("large", 303e6, 484e6, 787e6), ("2b", 1.0e9, 1.1e9, 2.1e9)])
def test_coca_table1_parameter_counts(size, image, decoder, total):
  """CoCa paper, Table 1: image encoder, text decoder (unimodal + multimodal + embeddings), total.

  The table's totals are image + decoder; the attentional poolers (~5-16M) are not in them.
  """
  c = info.param_counts(config.load(os.path.join(ROOT, f"configs/coca_{size}.py")))
  got = (c["vision"], c["text"] + c["decoder"], c["vision"] + c["text"] + c["decoder"])
  for g, want in zip(got, (image, decoder, total)):
    assert abs(g / want - 1) < 0.02, (size, got)


@pytest.mark.parametrize("name", ["coca_tiny", "cappa_tiny", "siglip_tiny"])
def test_analytic_flops_agree_with_xla(name):
  """Model FLOPs (matmuls read off the traced program) are within a few percent of XLA's total count."""
  cfg = config.load(os.path.join(ROOT, f"configs/{name}.py"))
  model, xla = info.train_flops_per_example(cfg), info.xla_flops_per_example(cfg)
  assert 0.9 * xla < model <= xla, (model, xla)


def test_vit_presets():
  from vlmjax import presets
  v = presets.vit("So400m/14", pool="map")
  assert (v.width, v.depth, v.mlp_dim, v.heads, v.patch_size, v.pool) == (1152, 27, 4304, 16, 14, "map")
  with pytest.raises(ValueError, match="unknown ViT variant"):
    presets.vit("B16")


def test_flops_count_only_live_products():
  """The chunked caption loss never uses the model's full caption logits: XLA drops them, so must
  the count (else MFU reads high); chunking that divides the positions evenly adds nothing."""
  counts = {ch: info.train_flops_per_example(config.load(os.path.join(ROOT, "configs/coca_tiny.py"),
                                                         [("loss.caption_chunk", ch)]))
            for ch in ("0", "5")}
  assert counts["0"] == counts["5"], counts


def test_naflex_flops_are_counted_at_the_budget_and_each_drawn_budget():
  """A NaFlex model's count is at data.train.max_patches patches per image (the encoder's max_num_patches
  only where that is 0), grows with the budget, and each of data.train.budgets gets its own; the analytic
  count agrees with XLA's at a budget."""
  spec = os.path.join(ROOT, "configs/siglip2_naflex_tiny.py:evals=0")
  cfg = config.load(spec, (("data.train.budgets", "16,32"),))
  flops = info.train_flops(cfg)
  assert flops["naflex_budget"] == 32
  per = flops["train_flops_per_budget"]
  assert per["32"] == flops["train_flops_per_example"] and 0 < per["16"] < per["32"]
  small = config.load(spec, (("data.train.max_patches", "16"),))
  assert info.train_flops(small)["train_flops_per_example"] == per["16"]
  assert abs(info.xla_flops_per_example(small) / per["16"] - 1) < 0.1
