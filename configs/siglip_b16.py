"""SigLIP ViT-B/16 at 224 px (Zhai et al., 2023): two towers, sigmoid loss, MAP image head.

    vlmjax train --config configs/siglip_b16.py --workdir runs/siglip_b16 \
        --config.data.train.source='tar:/data/webli/{00000..09999}.tar'

B/16 image tower (width 768, 12 layers, 12 heads, MLP 3072, learned position
embedding, MAP pooling); B-sized bidirectional text tower over 64 tokens with a
32k vocabulary, pooled at the last token; embedding 768; t' = log 10, b = -10;
tanh-approximate GELU and LayerNorm epsilon 1e-6 (HF SiglipModel's default config).
Batch 32k as in the paper. Config argument: batch, steps.

Public weights: HF `SiglipModel` directories convert as they are; open_clip's
`ViT-B-16-SigLIP` (timm towers) uses exact GELU, so add `--config.model.act=gelu`:

    vlmjax convert --from hf --checkpoint ./siglip-base-patch16-224 --config configs/siglip_b16.py --out w/siglip
    vlmjax convert --from open_clip --checkpoint open_clip_model.safetensors --config configs/siglip_b16.py \
        --config.model.act=gelu --out w/siglip_oc

SigLIP's tokenizers pad with a real token (</s>, id 1) and this tower attends to
padding; vlmjax batches pad with 0, so `model.text.pad_id=1` embeds id 1 there, as
the released weights expect.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 1e-3, 1e-4, 0.95
  c.optim.warmup_steps = min(5_000, a.steps // 5)

  m = c.model = presets.model_base("two_tower", dtype="bfloat16", remat="none", scan=False,
                                   act="gelu_tanh", norm_eps=1e-6)  # as big_vision / HF SiglipModel
  m.image_size = 224
  m.embed_dim = 768
  m.init_logit_scale = 10.0
  m.max_logit_scale = 0.0       # not clamped (big_vision)
  m.init_logit_bias = -10.0
  m.vision = presets.vit("B/16", pool="map")
  m.image_proj, m.text_proj = "none", "linear_bias"   # the MAP head's output is the embedding
  m.text = presets.text("siglip", vocab_size=32_000, context_length=64, width=768, depth=12, heads=12, mlp_dim=3072,
                        pad_id=1)  # SigLIP tokenizers pad with </s> (id 1); batches pad with 0, the tower embeds 1 there
  c.loss = presets.loss("siglip")
  return c
