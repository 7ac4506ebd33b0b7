"""CapPa ViT-B/16 at 224 px (Tschannen et al., 2023): image captioning as vision pretraining.

    vlmjax train --config configs/cappa_b16.py --workdir runs/cappa_b16 \
        --config.data.train.source='tar:/data/laion/{00000..09999}.tar'

B/16 image encoder (no pooling) feeding a 6-layer decoder (width 768, 12 heads,
MLP 3072) over 64 tokens of a 32k vocabulary. With probability 0.75 per example
the decoder sees only mask tokens and no causal mask (parallel prediction);
otherwise it is trained autoregressively. Loss: caption cross-entropy only.
AdamW with peak lr 1e-3, weight decay 1e-4, batch 8k as in the paper.
Config argument: batch, steps.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=8_192, steps=100_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 1e-3, 1e-4, 0.95
  c.optim.warmup_steps = min(10_000, a.steps // 5)

  m = c.model = presets.model_base("captioner")
  m.image_size = 224
  m.vision = presets.vit("B/16")
  m.text = presets.text("captioner", vocab_size=32_000, context_length=64)
  m.decoder = presets.decoder("cappa", width=768, depth=6, heads=12, mlp_dim=3072)

  c.loss = presets.loss("cappa", caption_chunk=16)
  return c
