"""The FLIP study's config (experiments/flip.py): siglip_tiny with the softmax loss at 64 px, batch 32,
evaluated during training (zero-shot and retrieval on 512 validation examples) so that accuracy can
be plotted against training FLOPs. Config argument: evals_every (steps between evaluations)."""

import os

from vlmjax import config
from vlmjax.config import parse_arg
from vlmjax.evals import defaults

SIGLIP_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "siglip_tiny.py")


def get_config(arg=None):
  a = parse_arg(arg, evals_every=60)
  c = config.load(f"{SIGLIP_TINY}:loss=softmax,batch=32")
  c.model.image_size = 64
  c.optim.warmup_steps = 48
  c.log_every, c.ckpt_every = 10, 1000
  c.evals.zs = defaults.zero_shot("synthetic:shapes:validation", num_examples=512, templates="shapes",
                                  every=a.evals_every)
  c.evals.ret = defaults.retrieval("synthetic:shapes:validation", num_examples=512, every=a.evals_every)
  return c
