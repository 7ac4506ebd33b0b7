"""CoCa-2b as in Table 1 of the CoCa paper (Yu et al., 2022): 288 px images, patch 18, 64k vocabulary.

    vlmjax train --config configs/coca_2b.py --workdir runs/coca_2b \
        --config.data.train.source='tar:/data/pretrain/{00000..09999}.tar'

Cascaded attentional poolers (256 generative queries, then 1 contrastive query),
caption loss weight 2, contrastive weight 1, batch 65,536 as in the paper. Check
the size with `vlmjax info --config configs/coca_2b.py`.
Config argument: batch, steps.
"""

import ml_collections

from vlmjax import presets
from vlmjax.config import base, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=65_536, steps=500_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 8e-4, 0.01, 0.999
  c.optim.warmup_steps = min(2_000, a.steps // 5)
  c.model = presets.coca("2b", patch=18, vocab_size=64_000, context_length=64)
  c.model.image_size = 288
  c.loss = ml_collections.ConfigDict(dict(
      contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.1, z_loss=0.0))
  return c
