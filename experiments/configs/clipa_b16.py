"""CLIPA at ViT-B/16 size on the shapes set (scripts/clipa_b16_check.sh): configs/clip_b16.py in float32
with zero-shot and retrieval evaluators on 256 validation examples at the last step. Config argument:
size (image size), ctx (text context), steps, batch, lr, warmup."""

import os

from vlmjax import config
from vlmjax.config import parse_arg
from vlmjax.evals import defaults

CLIP_B16 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "clip_b16.py")


def get_config(arg=None):
  a = parse_arg(arg, size=224, ctx=77, steps=200, batch=16, lr=5e-4, warmup=20)
  c = config.load(f"{CLIP_B16}:batch={a.batch},steps={a.steps}")
  c.model.dtype = "float32"
  c.model.image_size, c.model.text.context_length = a.size, a.ctx
  c.optim.lr, c.optim.warmup_steps = float(a.lr), a.warmup
  c.log_every, c.ckpt_every = 10, 100_000
  c.data.train.source = "synthetic:shapes"
  c.evals.zs = defaults.zero_shot("synthetic:shapes:validation", num_examples=256, templates="shapes")
  c.evals.ret = defaults.retrieval("synthetic:shapes:validation", num_examples=256)
  return c
