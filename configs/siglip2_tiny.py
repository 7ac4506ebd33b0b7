"""SigLIP 2's objective at CPU size on the multi-object shapes set: sigmoid loss + LocCa decoder.

    vlmjax train --config configs/siglip2_tiny.py --workdir runs/siglip2_tiny
    vlmjax train --config configs/siglip2_tiny.py:locca=0 --workdir runs/siglip_multi   # SigLIP alone

The model is siglip_tiny's (a 3-layer ViT at 64 px with a MAP head, a 2-layer bidirectional text
tower) plus a 2-layer LocCa decoder cross-attending to the 64 unpooled image tokens. Each example
gives the decoder one task (`vlmjax/data/locca.py`): captioning, referring expression (region text
-> box) or grounded captioning (box -> region text), in SigLIP 2's mix of one third each; boxes are
written as text with 32 bins per coordinate. Over the last 20% of steps, self-distillation (4 local
views of 32 px against the EMA teacher's whole image) and masked prediction (half the patches) join
(`vlmjax/distill.py`). Config argument: steps, batch, locca (0: SigLIP alone, no decoder), distill (0:
without the last phase), caption_weight.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, steps=300, batch=64, locca=1, distill=1, caption_weight=1.0)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.log_every = 20
  c.ckpt_every = 100
  c.optim.warmup_steps = min(50, a.steps // 5)
  c.data.train.source = "synthetic:shapes_multi"

  m = c.model = presets.model_base("siglip2" if a.locca else "two_tower", dtype="float32", remat="none",
                                   scan=False)
  m.image_size = 64
  m.embed_dim = 128
  m.init_logit_scale, m.init_logit_bias, m.max_logit_scale = 10.0, -10.0, 0.0
  m.vision = presets.vit_config(patch_size=8, width=128, depth=3, heads=4, mlp_dim=512, pool="map")
  m.image_proj, m.text_proj = "linear", "linear"
  m.text = presets.text("siglip", vocab_size=259, context_length=64, width=128, depth=2, heads=4, mlp_dim=512)
  c.loss = presets.loss("siglip")
  if a.locca:
    presets.siglip2_objective(c, decoder_depth=2, box_bins=32, distill=bool(a.distill), local_crops=4, local_size=32,
                              prototypes=256, head_hidden=256, head_bottleneck=64, ema_decay=0.99)
    c.loss.caption_weight = float(a.caption_weight)
  return c
