"""The SigLIP 2 study's config (experiments/siglip2.py): configs/siglip2_tiny.py (SigLIP + LocCa decoder +
the last-20% self-distillation and masked prediction, on synthetic:shapes_multi) with its evaluators at the
last step, on the multi-object validation split: zero-shot (the largest object's class) and retrieval
(512 examples), referring expressions (256) and the dense-feature probe (128 images, the probe fitted on
256 training images). Config argument: steps, batch."""

import os

from vlmjax import config
from vlmjax.config import parse_arg
from vlmjax.evals import defaults

SIGLIP2_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "siglip2_tiny.py")
VAL = "synthetic:shapes_multi:validation"


def get_config(arg=None):
  a = parse_arg(arg, steps=300, batch=64)
  c = config.load(f"{SIGLIP2_TINY}:steps={a.steps},batch={a.batch}")
  c.log_every, c.ckpt_every = 20, 1000
  c.evals.zs = defaults.zero_shot(VAL, num_examples=512, templates="shapes", batch_size=128)
  c.evals.ret = defaults.retrieval(VAL, num_examples=512, batch_size=128)
  c.evals.ref = defaults.refexp(VAL, num_examples=256, batch_size=128)
  c.evals.dense = defaults.dense_probe(VAL, num_examples=128, train_examples=256, batch_size=128)
  return c
