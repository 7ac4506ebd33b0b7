"""CoCa-tiny on the synthetic shapes set: the CPU demo and the test model.

    vlmjax train --config configs/coca_tiny.py --workdir runs/demo

(`make demo` runs this on tar shards it writes first.) On a 2-core CPU it trains
in about two minutes; the combined loss falls from ~12 to well under half of it.
Config argument (`configs/coca_tiny.py:steps=300,batch=32`): steps, batch.
"""

import ml_collections

from vlmjax.config import parse_arg

def get_config(arg=None):
  a = parse_arg(arg, steps=240, batch=64)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = a.batch
  c.total_steps = a.steps
  c.log_every = 20
  c.eval_every = 0            # evaluators arrive with the evaluation issue
  c.ckpt_every = 80
  c.ckpt_keep = 3             # keep the latest N checkpoints ...
  c.ckpt_keep_every = 0       # ... and every K-th step (0: none)

  m = c.model = ml_collections.ConfigDict()
  m.name = "coca"
  m.dtype = "float32"         # compute dtype
  m.param_dtype = "float32"
  m.attention = "auto"        # auto | xla | cudnn
  m.image_size = 32
  m.embed_dim = 128
  m.init_logit_scale = 1 / 0.07
  m.vision = ml_collections.ConfigDict(dict(
      patch_size=8, width=128, depth=3, heads=4, mlp_dim=512, posemb="learn", pool="none"))
  m.text = ml_collections.ConfigDict(dict(
      vocab_size=259, context_length=40, width=128, depth=2, heads=4, mlp_dim=512,
      causal=True, pool="cls"))
  m.decoder = ml_collections.ConfigDict(dict(depth=2, heads=4, mlp_dim=512))
  m.pooler = ml_collections.ConfigDict(dict(mode="parallel", n_queries=16, heads=4))

  c.loss = ml_collections.ConfigDict(dict(
      contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=min(50, a.steps // 5), end_lr_ratio=0.0, b1=0.9, b2=0.98, eps=1e-6,
      weight_decay=0.1, grad_clip=1.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.mesh.rules = ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"), embed="fsdp", mlp="tensor", heads="tensor", vocab="tensor", patch=None))

  c.data = ml_collections.ConfigDict()
  c.data.train = ml_collections.ConfigDict(dict(
      source="synthetic:shapes", tokenizer="bytes", num_threads=2, prefetch=4))
  c.evals = ml_collections.ConfigDict()
  return c
