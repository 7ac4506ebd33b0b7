"""A tiny two-tower model on the synthetic shapes set: SigLIP (sigmoid loss) or CLIP (softmax).

    vlmjax train --config configs/siglip_tiny.py --workdir runs/siglip_tiny
    vlmjax train --config configs/siglip_tiny.py:loss=softmax --workdir runs/clip_tiny

Trains on a 2-core CPU in about a minute. Config argument: loss (sigmoid | softmax), steps, batch.
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg

def get_config(arg=None):
  a = parse_arg(arg, loss="sigmoid", steps=240, batch=64)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.log_every = 20
  c.ckpt_every = 80
  c.optim.warmup_steps = min(50, a.steps // 5)

  m = c.model = presets.model_base("two_tower", dtype="float32", remat="none", scan=False)
  m.image_size = 32
  m.embed_dim = 128
  sigmoid = a.loss == "sigmoid"
  m.init_logit_scale = 10.0 if sigmoid else 1 / 0.07   # SigLIP: t' = log 10, b = -10
  m.init_logit_bias = -10.0 if sigmoid else None
  m.max_logit_scale = 0.0 if sigmoid else 100.0  # CLIP clamps exp(t) to 100 (open_clip); SigLIP does not
  m.vision = presets.vit_config(patch_size=8, width=128, depth=3, heads=4, mlp_dim=512,
                                pool="map" if sigmoid else "gap")
  m.image_proj, m.text_proj = "linear", "linear"
  m.text = presets.text("causal_eos", vocab_size=259, context_length=40, width=128, depth=2, heads=4, mlp_dim=512,
                        causal=not sigmoid)

  c.loss = presets.loss("siglip" if sigmoid else "clip")
  return c
