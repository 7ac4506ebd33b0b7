"""open_clip's `coca_ViT-L-14` (CoCa, Yu et al., 2022): start from LAION's released weights.

    vlmjax convert --from open_clip --checkpoint open_clip_pytorch_model.bin \
        --config configs/openclip_coca_l14.py --config.model.text.vocab_size=49409 \
        --tokenizer open_clip:bpe_simple_vocab_16e6.txt.gz --out ckpt/coca_l14
    vlmjax train --config configs/openclip_coca_l14.py:batch=1024,steps=10000 --workdir runs/coca_l14_ft \
        --config.model.text.vocab_size=49409 --config.init_from=ckpt/coca_l14 \
        --config.data.train.tokenizer=open_clip:ckpt/coca_l14/tokenizer.json \
        --config.data.train.source='tar:/data/mscoco/{00000..00059}.tar'

The vocabulary override adds the padding row that vlmjax's copy of open_clip's BPE
needs (its ids shift up by one so 0 is padding); without a tokenizer keep 49,408.
Layer for layer what open_clip 3.3 builds (638,450,177 parameters with 49,408 tokens):
an L/14 ViT at 224 px with a class token, pre-norm, no patch bias and no final norm;
one 256-query attentional pooler (open_clip layout, width 768, 8 heads) whose first
output, normed and projected, is the image embedding and whose other 255 are the
decoder's context; a causal text transformer (width 768, 12 layers, 12 heads, 76 tokens
+ trailing CLS) with the legacy CLS mask and pre-norm decoder tokens of the released
weights; 12 multimodal layers (self-attention block + cross-attention block, 12 heads).
Loss and optimiser as open_clip's CoCa: contrastive 1, caption 2; AdamW 5e-4, beta2
0.98, wd 0.2. Config argument: act (gelu | quick_gelu; released CoCa weights: gelu),
batch, steps.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, act="gelu", batch=32_768, steps=100_000)
  model = presets.openclip_coca("L/14", width=768, heads=12, pooler_heads=8, act=a.act)
  model.remat = "dots_no_batch"
  return presets.openclip_experiment(model, batch=a.batch, steps=a.steps, caption_weight=2.0)
