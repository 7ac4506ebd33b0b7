"""open_clip's `coca_ViT-B-32` architecture with patch 16: the benchmark twin of open_clip.

    vlmjax train --config configs/openclip_coca_b16.py --workdir runs/openclip_coca_b16 \
        --config.data.train.source='tar:/data/laion/{00000..09999}.tar'
    python scripts/bench_step.py --config configs/openclip_coca_b16.py --batch 256

Layer for layer what open_clip 3.3 builds for that model (251,903,489 parameters):
a B/16 ViT at 224 px with a class token, pre-norm, no patch bias and no final norm;
one 256-query attentional pooler (open_clip layout, width 512, 8 heads) whose first
output, normed and projected, is the image embedding and whose other 255 are the
decoder's context; a causal text transformer (width 512, 12 layers, 8 heads, 76
tokens + trailing CLS, 49,408 vocabulary; the CLS padding mask shifted by one, as released
CoCa weights were trained, and the decoder reading its tokens before the final norm);
12 multimodal layers of a self-attention
block and a cross-attention block each. Loss as open_clip's CoCa: contrastive 1,
caption 2. Optimiser as open_clip's defaults (AdamW 5e-4, beta2 0.98, wd 0.2).
Config argument: batch, steps.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=256, steps=100_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 5e-4, 0.2, 0.98
  c.optim.warmup_steps = min(2_000, a.steps // 5)

  m = c.model = presets.model_base("coca", dtype="bfloat16", remat="none", scan=False)
  m.image_size = 224
  m.embed_dim = 512
  m.init_logit_scale = 1 / 0.07
  m.max_logit_scale = 100.0     # clamped after every step, as open_clip
  m.vision = presets.vit("B/16", cls_token=True, ln_pre=True, patch_bias=False, final_norm=False)
  m.text = presets.text("open_clip_coca", vocab_size=49_408, context_length=76, width=512, depth=12, heads=8,
                        mlp_dim=2048)
  m.decoder = presets.decoder("open_clip", depth=12, heads=8, mlp_dim=2048)
  m.pooler = presets.pooler("open_clip", width=512, n_queries=256, heads=8)

  c.loss = presets.loss("coca", caption_chunk=16)
  return c
