"""SigLIP ViT-B/16 at 224 px (Zhai et al., 2023): two towers, sigmoid loss, MAP image head.

    vlmjax train --config configs/siglip_b16.py --workdir runs/siglip_b16 \
        --config.data.train.source='tar:/data/webli/{00000..09999}.tar'

B/16 image tower (width 768, 12 layers, 12 heads, MLP 3072, learned position
embedding, MAP pooling); B-sized bidirectional text tower over 64 tokens with a
32k vocabulary, pooled at the last token; embedding 768; t' = log 10, b = -10;
tanh-approximate GELU and LayerNorm epsilon 1e-6 (HF SiglipModel's default config).
Batch 32k as in the paper. Config argument: batch, steps.

Public weights: HF `SiglipModel` directories convert as they are; open_clip's
`ViT-B-16-SigLIP` (timm towers) uses exact GELU, so add `--config.model.act=gelu`:

    vlmjax convert --from hf --checkpoint ./siglip-base-patch16-224 --config configs/siglip_b16.py --out w/siglip
    vlmjax convert --from open_clip --checkpoint open_clip_model.safetensors --config configs/siglip_b16.py \
        --config.model.act=gelu --out w/siglip_oc

SigLIP's tokenizers pad with a real token (</s>, id 1) and this tower attends to
padding; vlmjax batches pad with 0, so `model.text.pad_id=1` embeds id 1 there, as
the released weights expect.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000)
  return presets.siglip_experiment("B/16", image_size=224, vocab_size=32_000, pad_id=1, batch=a.batch, steps=a.steps)
