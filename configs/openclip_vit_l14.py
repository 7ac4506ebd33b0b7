"""open_clip's `ViT-L-14` (CLIP, Radford et al., 2021): start from OpenAI's or LAION's weights.

    # OpenAI weights (open_clip `ViT-L-14` pretrained=openai, or `ViT-L-14-quickgelu`): act=quick_gelu
    vlmjax convert --from open_clip --checkpoint open_clip_pytorch_model.bin \
        --config configs/openclip_vit_l14.py:act=quick_gelu --config.model.text.vocab_size=49409 \
        --tokenizer open_clip:bpe_simple_vocab_16e6.txt.gz --out ckpt/vit_l14_openai
    vlmjax train --config configs/openclip_vit_l14.py:act=quick_gelu,batch=4096,steps=10000 \
        --workdir runs/vit_l14_ft --config.model.text.vocab_size=49409 \
        --config.init_from=ckpt/vit_l14_openai --config.data.train.tokenizer=open_clip:ckpt/vit_l14_openai/tokenizer.json \
        --config.data.train.source='tar:/data/laion/{00000..09999}.tar'
    # LAION weights (e.g. laion2b_s32b_b82k): act=gelu (the default), same commands.

The vocabulary override adds the padding row that vlmjax's copy of open_clip's BPE
needs (its ids shift up by one so 0 is padding); without a tokenizer keep 49,408.
Layer for layer what open_clip 3.3 builds (427,616,513 parameters with 49,408 tokens):
an L/14 ViT at 224 px with a class token, pre-norm, no patch bias, pooled at the class
token after ln_post; a causal text transformer (width 768, 12 layers, 12 heads, 77
tokens) pooled at EOS; bias-free projections to 768. Layers are scanned (compile time
independent of depth; converted weights map either way). Optimiser and loss as
open_clip's defaults (AdamW 5e-4, beta2 0.98, wd 0.2; softmax contrastive). Config
argument: act (gelu | quick_gelu), batch, steps.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, act="gelu", batch=32_768, steps=100_000)
  model = presets.openclip_clip("L/14", text_width=768, text_heads=12, embed_dim=768, act=a.act)
  model.remat = "dots_no_batch"
  return presets.openclip_experiment(model, batch=a.batch, steps=a.steps, caption_weight=0.0)
