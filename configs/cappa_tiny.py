"""CapPa-tiny on the synthetic shapes set: a captioning-only pretrainer on CPU.

    vlmjax train --config configs/cappa_tiny.py --workdir runs/cappa_tiny

Same ViT as coca_tiny, a 2-layer decoder, parallel prediction with probability
0.75 (`:masked=0` trains purely autoregressively). On a 2-core CPU, 240 steps take
about two minutes. Config argument: steps, batch, masked.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, steps=240, batch=64, masked=0.75)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.log_every = 20
  c.ckpt_every = 80
  c.optim.warmup_steps = min(50, a.steps // 5)

  m = c.model = presets.model_base("captioner", dtype="float32", remat="none", scan=False)
  m.image_size = 32
  m.vision = presets.vit_config(patch_size=8, width=128, depth=3, heads=4, mlp_dim=512)
  m.text = presets.text("captioner", vocab_size=259, context_length=40)
  m.decoder = presets.decoder("cappa", width=128, depth=2, heads=4, mlp_dim=512, masked_pred_prob=float(a.masked))

  c.loss = presets.loss("cappa")
  return c
