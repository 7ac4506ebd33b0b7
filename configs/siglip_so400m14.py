"""SigLIP So400m/14 at 384 px (Alabdulmohsin et al., 2023) as released: google/siglip-so400m-patch14-384.

    vlmjax convert --from hf --checkpoint ./siglip-so400m-patch14-384 --config configs/siglip_so400m14.py \
        --tokenizer sentencepiece:./siglip-so400m-patch14-384/spiece.model --out w/siglip_so400m14
    vlmjax train --config configs/siglip_so400m14.py:batch=4096,steps=10000 --workdir runs/so400m_ft \
        --config.init_from=w/siglip_so400m14 --config.data.train.tokenizer=sentencepiece:w/siglip_so400m14/spiece.model \
        --config.data.train.source='tar:/data/webli/{00000..09999}.tar'

Shape-optimised ViT So400m/14 (width 1152, 27 layers, 16 heads, MLP 4304; learned position
embedding, patch bias, final LayerNorm, MAP head whose output is the embedding) and a text
tower of the same shape (1152 wide, 27 layers, 16 heads, MLP 4304) over 64 tokens of the 32,000-id
English sentencepiece vocabulary, bidirectional, pooled at the last position, biased projection to
1152; tanh GELU, LayerNorm eps 1e-6; t' = log 10, b = -10 at init. 877,960,498 parameters, as
transformers' SiglipModel of that checkpoint.

Resolution: the checkpoint takes 384 px images, but 384 is not a multiple of 14: its patch conv
(stride 14, no padding) reads a 27x27 grid and ignores the last 6 rows and columns. vlmjax's ViT
needs the image to be the grid, so this config says model.image_size=378 (27 x 14): the same
parameters (729 position embeddings); the released model is reproduced exactly on the top-left
378x378 crop of its 384 px input, and approximately on images resized to 378.

Tokenizer: `sentencepiece:PATH` on the checkpoint's spiece.model (pad 0, eos 1, no bos: ids
unshifted, eos appended). SigLIP pads with </s> (id 1) and this tower attends to padding; vlmjax
batches pad with 0, so model.text.pad_id=1 embeds id 1 there, as the released weights expect.
SigLIP's text was lower-cased (big_vision's tokenizer op; HF's SiglipTokenizer also drops
punctuation): lower-case captions before, as vlmjax's `sentencepiece:` keeps the text as it is.
Training settings as configs/siglip_b16.py (big_vision's SigLIP recipe). Config argument: batch, steps.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000)
  return presets.siglip_experiment("So400m/14", image_size=378, vocab_size=32_000, pad_id=1,  # 27 x 14 px
                                   batch=a.batch, steps=a.steps, remat="dots_no_batch", scan=True)
