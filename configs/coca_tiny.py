"""CoCa-tiny on the synthetic shapes set: the CPU demo and the test model.

    vlmjax train --config configs/coca_tiny.py --workdir runs/demo

(`make demo` runs this on tar shards it writes first.) On a 2-core CPU it trains
240 steps in about 2.5 minutes; the combined loss falls from ~16 to under 1.
Config argument (`configs/coca_tiny.py:steps=300,batch=32`): steps, batch, evals (0: no evaluators).
"""

from vlmjax import presets
from vlmjax.config import base, parse_arg
from vlmjax.evals import defaults as evals


def get_config(arg=None):
  a = parse_arg(arg, steps=240, batch=64, evals=1)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.log_every = 20
  c.ckpt_every = 80
  c.optim.warmup_steps = min(50, a.steps // 5)

  m = c.model = presets.model_base("coca", dtype="float32", remat="none", scan=False)
  m.image_size = 32
  m.embed_dim = 128
  m.init_logit_scale = 1 / 0.07
  m.max_logit_scale = 100.0     # clamped after every step, as open_clip
  m.vision = presets.vit_config(patch_size=8, width=128, depth=3, heads=4, mlp_dim=512)
  m.text = presets.text("causal_cls", vocab_size=259, context_length=40, width=128, depth=2, heads=4, mlp_dim=512)
  m.decoder = presets.decoder("coca", depth=2, heads=4, mlp_dim=512)
  m.pooler = presets.pooler("coca_parallel", width=128, n_queries=16, heads=4)

  # Held-out shapes (the test split's own seed): zero-shot over the 32 colour x shape classes,
  # retrieval, and greedy captions scored with CIDEr / BLEU-4 / ROUGE-L, at the last step.
  if a.evals:
    held_out = "synthetic:shapes:test"
    c.evals.zero_shot = evals.zero_shot(held_out, batch_size=256, num_examples=512, templates="shapes",
                                        every=0)
    c.evals.retrieval = evals.retrieval(held_out, batch_size=256, num_examples=512, every=0)
    c.evals.captioning = evals.captioning(held_out, batch_size=64, num_examples=64, max_len=40, meteor=False,
                                          every=0)

  c.loss = presets.loss("coca")
  return c
