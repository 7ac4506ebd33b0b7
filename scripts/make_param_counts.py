"""Parameter counts of the reference models behind configs/siglip2_b16.py, configs/siglip2_b16_naflex.py and
configs/siglip_so400m14.py.

    /work/torchenv/bin/python scripts/make_param_counts.py   # any venv with torch and transformers

Builds transformers' SiglipModel from each released checkpoint's config.json (the values below; every
other field is SiglipConfig's default, as in the released files) on the meta device (no memory, no
download), and for SigLIP 2 B/16 also Siglip2Model (the NaFlex layout) at 256 patches (also the reference
of the NaFlex config), and writes tests/fixtures/convert/reference_param_counts.json: per config, per
reference model, the parameters of `vision_model` (patch embedding, position embedding, blocks,
post-norm, MAP head), `text_model` (embeddings, blocks, final norm, head), `logit` (logit_scale +
logit_bias) and `total`.
tests/test_convert_siglip2.py compares vlmjax's counts, from abstract params, with them.
"""

from __future__ import annotations

import json
import os

import torch
import transformers
from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "convert", "reference_param_counts.json")
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27)
REFERENCES = {  # config -> [(released model, class, its config.json's text_config, vision_config)]
    "siglip2_b16": [
        ("google/siglip2-base-patch16-256", "SiglipModel", dict(vocab_size=256_000), dict(image_size=256)),
        ("google/siglip2-base-patch16-naflex at 256 patches", "Siglip2Model", dict(vocab_size=256_000),
         dict(num_patches=256)),
    ],
    "siglip2_b16_naflex": [
        ("google/siglip2-base-patch16-naflex", "Siglip2Model", dict(vocab_size=256_000), dict(num_patches=256)),
    ],
    "siglip_so400m14": [
        ("google/siglip-so400m-patch14-384", "SiglipModel", dict(SO400M), dict(SO400M, image_size=384, patch_size=14)),
    ],
}
CLASSES = {"SiglipModel": (SiglipModel, SiglipConfig), "Siglip2Model": (Siglip2Model, Siglip2Config)}


def count(model: torch.nn.Module, prefix: str) -> int:
  return sum(p.numel() for name, p in model.named_parameters() if name.startswith(prefix))


def counts(cls_name: str, text: dict, vision: dict) -> dict:
  cls, config_cls = CLASSES[cls_name]
  config = config_cls(text_config=text, vision_config=vision)
  with torch.device("meta"):
    model = cls(config)
  out = dict(vision=count(model, "vision_model."), text=count(model, "text_model."),
             logit=count(model, "logit_"), total=count(model, ""))
  assert out["vision"] + out["text"] + out["logit"] == out["total"], out
  return out


def main() -> None:
  transformers.logging.set_verbosity_error()  # the released configs keep SigLIP 1's bos/eos ids, unused
  result = {"transformers": transformers.__version__, "torch": torch.__version__, "configs": {}}
  for name, refs in REFERENCES.items():
    result["configs"][name] = [dict(model=model, cls=cls, text_config=text, vision_config=vision,
                                    **counts(cls, text, vision)) for model, cls, text, vision in refs]
    for ref in result["configs"][name]:
      print(f"{name}: {ref['model']} ({ref['cls']}): {ref['total']:,}")
  with open(OUT, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
  main()
