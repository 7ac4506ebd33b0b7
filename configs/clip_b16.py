"""CLIP ViT-B/16 at 224 px (Radford et al., 2021): two towers, softmax contrastive loss.

    vlmjax train --config configs/clip_b16.py --workdir runs/clip_b16 \
        --config.data.train.source='tar:/data/laion/{00000..09999}.tar'

B/16 image tower pooled at a CLS token; causal text transformer (width 512,
12 layers, 8 heads, 77 tokens, 49,408 vocabulary) pooled at the EOS position;
embedding 512; temperature initialised at 0.07. Config argument: batch, steps.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 5e-4, 0.2, 0.98
  c.optim.warmup_steps = min(2_000, a.steps // 5)

  m = c.model = presets.model_base("two_tower", dtype="bfloat16", remat="none", scan=False)
  m.image_size = 224
  m.embed_dim = 512
  m.init_logit_scale = 1 / 0.07
  m.max_logit_scale = 100.0     # clamped after every step, as open_clip
  m.init_logit_bias = None   # CLIP has no logit bias
  m.vision = presets.vit("B/16", pool="cls", cls_token=True, ln_pre=True, patch_bias=False)
  m.image_proj, m.text_proj = "linear", "linear"
  m.text = presets.text("causal_eos", vocab_size=49_408, context_length=77, width=512, depth=12, heads=8,
                        mlp_dim=2048)
  c.loss = presets.loss("clip")
  return c
