"""open_clip's `ViT-B-32` (CLIP, Radford et al., 2021): start from OpenAI's or LAION's weights.

    # OpenAI weights (open_clip `ViT-B-32` pretrained=openai, or `ViT-B-32-quickgelu`): act=quick_gelu
    vlmjax convert --from open_clip --checkpoint open_clip_pytorch_model.bin \
        --config configs/openclip_vit_b32.py:act=quick_gelu --config.model.text.vocab_size=49409 \
        --tokenizer open_clip:bpe_simple_vocab_16e6.txt.gz --out ckpt/vit_b32_openai
    vlmjax train --config configs/openclip_vit_b32.py:act=quick_gelu,batch=4096,steps=10000 \
        --workdir runs/vit_b32_ft --config.model.text.vocab_size=49409 \
        --config.init_from=ckpt/vit_b32_openai --config.data.train.tokenizer=open_clip:ckpt/vit_b32_openai/tokenizer.json \
        --config.data.train.source='tar:/data/laion/{00000..09999}.tar'
    # LAION weights (e.g. laion2b_s34b_b79k): act=gelu (the default), same commands.

The vocabulary override adds the padding row that vlmjax's copy of open_clip's BPE
needs (its ids shift up by one so 0 is padding); without a tokenizer keep 49,408.
Layer for layer what open_clip 3.3 builds (151,277,313 parameters with 49,408 tokens):
a B/32 ViT at 224 px with a class token, pre-norm, no patch bias, pooled at the class
token after ln_post; a causal text transformer (width 512, 12 layers, 8 heads, 77
tokens) pooled at EOS; bias-free projections to 512. Optimiser and loss as open_clip's
defaults (AdamW 5e-4, beta2 0.98, wd 0.2; softmax contrastive). Config argument: act
(gelu | quick_gelu), batch, steps.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, act="gelu", batch=32_768, steps=100_000)
  model = presets.openclip_clip("B/32", text_width=512, text_heads=8, embed_dim=512, act=a.act)
  return presets.openclip_experiment(model, batch=a.batch, steps=a.steps, caption_weight=0.0)
