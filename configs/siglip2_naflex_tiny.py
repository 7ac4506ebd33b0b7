"""A tiny NaFlex two-tower model (SigLIP 2's variable-resolution image tower) on shapes of mixed aspect ratios.

    vlmjax train --config configs/siglip2_naflex_tiny.py --workdir runs/siglip2_naflex_tiny

configs/siglip_tiny.py's towers and sigmoid loss, except the image tower: `model.vision.kind=naflex`
(`vlmjax/models/naflex.py`) over 8x8 patches with a 4x4 learned position table (`num_patches` 16, resized
per image to its grid). The data (`data.train.max_patches` 32, `vlmjax/data/naflex.py`) gives each image of
`synthetic:shapes_wide` (width / height in {1/2, 2/3, 1, 3/2, 2}) at its aspect ratio on the largest grid of
at most 32 patches, padded to 32 tokens (`data/padding_fraction` in the metrics says how many are padding).
Evaluated at the end on 256 validation images the same way (each at its aspect ratio within the budget):
zero-shot classification and retrieval. Config argument: steps, batch, evals (0: none), pack (1: the batch's
images packed into shared sequences, `data.train.pack`: 64 images in 16 rows of 112 tokens instead of 64 rows
of 32, a few images resized to fit), locca (1: SigLIP 2's whole objective but self-distillation, a 2-layer LocCa
decoder cross-attending to each image's own tokens, on `synthetic:shapes_multi`, whose objects have boxes;
evaluated by captioning as well).
"""

import ml_collections

from vlmjax import presets
from vlmjax.config import base, parse_arg
from vlmjax.evals import defaults


def get_config(arg=None):
  a = parse_arg(arg, steps=240, batch=64, evals=1, pack=0, locca=0)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.log_every = 20
  c.ckpt_every = 80
  c.optim.warmup_steps = min(50, a.steps // 5)

  m = c.model = presets.model_base("two_tower", dtype="float32", remat="none", scan=False)
  m.image_size = 32  # the native 4x4 grid of 8 px patches; each image brings its own grid
  m.embed_dim = 128
  m.init_logit_scale, m.init_logit_bias, m.max_logit_scale = 10.0, -10.0, 0.0  # SigLIP: t' = log 10, b = -10
  m.vision = ml_collections.ConfigDict(dict(
      kind="naflex", patch_size=8, width=128, depth=3, heads=4, mlp_dim=512, pool="map",
      num_patches=16, max_num_patches=32))
  m.image_proj, m.text_proj = "linear", "linear"
  m.text = presets.text("causal_eos", vocab_size=259, context_length=40, width=128, depth=2, heads=4, mlp_dim=512,
                        causal=False)

  c.data.train.source = "synthetic:shapes_wide"
  c.data.train.max_patches = 32
  if a.pack:
    c.data.train.pack, c.data.train.pack_length, c.data.train.pack_rows = True, 112, a.batch // 4
  c.loss = presets.loss("siglip")
  source = "synthetic:shapes_multi" if a.locca else "synthetic:shapes_wide"
  if a.locca:
    c.data.train.source = source
    presets.siglip2_objective(c, decoder_depth=2, box_bins=32, distill=False, local_crops=0, local_size=0,
                              prototypes=0, head_hidden=0, head_bottleneck=0, ema_decay=0.0)
  if a.evals:
    c.evals.zs = defaults.zero_shot(f"{source}:validation", num_examples=256, templates="shapes")
    c.evals.ret = defaults.retrieval(f"{source}:validation", num_examples=256)
    if a.locca:
      c.evals.cap = defaults.captioning(f"{source}:validation", num_examples=64, batch_size=64, max_len=40, meteor=False)
  return c
