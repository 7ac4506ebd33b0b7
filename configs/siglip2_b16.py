"""SigLIP 2 B/16 at 256 px (Tschannen et al., 2025): the released towers plus the LocCa decoder it trains with.

    vlmjax train --config configs/siglip2_b16.py --workdir runs/siglip2_b16 \
        --config.data.train.tokenizer=gemma:tokenizer.model --config.data.train.source='tar:/data/{00000..09999}.tar'
    vlmjax convert --from hf --checkpoint ./siglip2-base-patch16-256 --config configs/siglip2_b16.py:locca=0 \
        --tokenizer gemma:./siglip2-base-patch16-256/tokenizer.model --out w/siglip2_b16
    vlmjax train --config configs/siglip2_b16.py:batch=4096,steps=10000,locca=0 --workdir runs/siglip2_ft \
        --config.init_from=w/siglip2_b16 --config.data.train.tokenizer=gemma:w/siglip2_b16/tokenizer.model \
        --config.data.train.source='tar:/data/webli/{00000..09999}.tar'

The released fixed-resolution SigLIP 2 is SigLIP's architecture (HF `SiglipModel`, big_vision's
two_towers) with the Gemma vocabulary: a B/16 ViT at 256 px (16x16 patches, learned position
embedding, patch bias, final LayerNorm, MAP head; its output is the embedding), a B-sized
bidirectional text tower over 64 tokens with 256,000 ids pooled at the last position and a
biased projection to 768; tanh GELU, LayerNorm eps 1e-6; t' = log 10, b = -10 at init.
375,234,050 parameters, as transformers' SiglipModel of that checkpoint (and Siglip2Model, the
NaFlex layout, at 256 patches: its Linear patch embedding has the conv's parameters).

Tokenizer: `gemma:PATH` on the Gemma sentencepiece model (the checkpoint's tokenizer.model, or
big_vision's gemma tokenizer): text lower-cased (A-Z, as big_vision's `lower`), no <bos>, <eos>
appended and kept when truncated, padded with <pad> = 0 to 64 (HF: GemmaTokenizer with
add_bos_token=False, add_eos_token=True, padding="max_length", max_length=64, on lower-cased
text). The tower attends to padding and embeds id 0 there, as vlmjax batches pad: pad_id=0.
Without `--tokenizer`, `vlmjax convert` would take the directory's tokenizer.json as `hf:`, which adds
<bos>: pass `--tokenizer gemma:...` (it then trains and evaluates with `gemma:OUT/tokenizer.model`). The NaFlex checkpoints (HF Siglip2Model) convert
through the same config at their native square grid (`--from hf` recognises model_type siglip2).
Training settings as configs/siglip_b16.py (big_vision's SigLIP recipe).

With `locca=1` (the default) the model is the `siglip2` family: the same towers (the same 375,234,050
parameters, which `vlmjax info` lists apart from the decoder's) plus SigLIP 2's LocCa decoder
cross-attending to the 256 unpooled image tokens, trained on captioning, referring expressions and
grounded captioning in equal parts (`data.train.locca`; ref and gcap need records with regions), with
caption loss weight 1. The paper gives the decoder no sizes; here it has the text tower's width and
heads and 6 layers (assumed, `:decoder_depth=N`), its output head tied to its 256,000-id input
embedding (an untied one would add 197M parameters), boxes as four integers in
0..499. `locca=0` is the released two-tower layout that `vlmjax convert` fills. The decoder is
discarded after training: `vlmjax convert --to hf` exports the towers. Over the last 20% of steps
self-distillation (8 local views of 128 px, DINO-sized heads: 2048 hidden, 256 bottleneck, 65,536
prototypes) and masked prediction (half the patches) join against the EMA teacher (decay 0.999);
`vlmjax info` lists those heads apart too. Config argument: batch, steps, locca, distill, decoder_depth.
"""

from vlmjax import presets
from vlmjax.config import parse_arg


def get_config(arg=None):
  a = parse_arg(arg, batch=32_768, steps=100_000, locca=1, distill=1, decoder_depth=6)
  c = presets.siglip_experiment("B/16", image_size=256, vocab_size=256_000, pad_id=0, batch=a.batch,
                                steps=a.steps)  # Gemma's <pad> is 0, what batches hold at padding
  if a.locca:
    presets.siglip2_objective(c, decoder_depth=a.decoder_depth, box_bins=500, distill=bool(a.distill), local_crops=8,
                              local_size=128, prototypes=65_536, head_hidden=2048, head_bottleneck=256,
                              ema_decay=0.999)
  return c
