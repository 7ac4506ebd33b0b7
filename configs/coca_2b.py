"""CoCa-2b as in Table 1 of the CoCa paper (Yu et al., 2022): 288 px images, patch 18, 64k vocabulary.

    vlmjax train --config configs/coca_2b.py --workdir runs/coca_2b \
        --config.data.train.source='tar:/data/pretrain/{00000..09999}.tar'

Cascaded attentional poolers (256 generative queries, then 1 contrastive query),
caption loss weight 2, contrastive weight 1, batch 65,536 as in the paper; the
architecture and optimiser are `vlmjax.presets.coca_paper("2b")`. Check the size
with `vlmjax info --config configs/coca_2b.py`. Config argument: batch, steps.
"""

from vlmjax import presets


def get_config(arg=None):
  return presets.coca_paper("2b", arg)
