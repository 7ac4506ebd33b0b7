import json
import os
import subprocess
import sys

from vlmjax import config, info

from conftest import ROOT


def test_param_counts_clip_b16_matches_published_size():
  counts = info.param_counts(config.load(os.path.join(ROOT, "configs/clip_b16.py")))
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
  # open_clip ViT-B-16 has 149,620,737 parameters: ours lacks its ln_pre (1,536) and adds logit_bias (1).
  assert counts["total"] == 149_620_737 - 1_536 + 1
  assert counts["vision"] == 85_799_424 - 1_536  # open_clip's visual tower without proj (393,216)


def test_info_cli_json():
  proc = subprocess.run([sys.executable, "-m", "vlmjax.cli", "info", "--config", "configs/coca_tiny.py", "--json"],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert set(out["params"]) >= {"vision", "text", "decoder", "caption_pool", "contrastive_pool", "total"}
  # forward+backward is about 3x the forward matmuls: 2 * params * tokens is a lower bound of the forward.
  assert 3 * 2 * out["params"]["vision"] * 16 < out["train_flops_per_example"] < 1e10
