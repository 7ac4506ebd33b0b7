"""Named architecture sizes and config groups, so configs say `vit("B/16")` or `loss("coca")` instead
of repeating numbers and layouts: a config states only what differs from a named preset.

ViT sizes follow big_vision (Ti, S, B, L, H, g, So400m; Zhai et al. 2022, Alabdulmohsin
et al. 2023); CoCa sizes follow Table 1 of the CoCa paper (Yu et al., 2022).
"""

from __future__ import annotations

import ml_collections

from vlmjax.config import base, parse_arg
from vlmjax.errors import ConfigError

VIT = {  # width, depth, MLP, heads
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "So400m": (1152, 27, 4304, 16),
}

COCA = {  # image (width, depth, MLP, heads); decoder (n_uni, n_multi, MLP); hidden / heads shared
    "base": dict(vision="B", uni=12, multi=12, dec_mlp=3072, width=768, heads=12, tie=False),
    "large": dict(vision="L", uni=12, multi=12, dec_mlp=4096, width=1024, heads=16, tie=False),
    # Table 1's 1.1B decoder (2.1B total) is only reached with the vocabulary head tied to the
    # input embedding; Base's 297M and Large's 484M need them separate.
    "2b": dict(vision="g", uni=18, multi=18, dec_mlp=5632, width=1408, heads=16, tie=True),
}


def model_base(name: str, *, dtype: str = "bfloat16", remat: str = "none", scan: bool = True,
               act: str = "gelu", norm_eps: float = 1e-5) -> ml_collections.ConfigDict:
  """The settings every `model` config has: family name, dtypes, attention, remat, scan,
  MLP activation and LayerNorm epsilon."""
  m = ml_collections.ConfigDict()
  m.name = name
  m.dtype = dtype              # compute dtype; parameters stay float32
  m.param_dtype = "float32"
  m.attention = "auto"         # auto (cuDNN on GPU when it applies) | xla | cudnn
  m.remat = remat              # none | full | dots | dots_no_batch: jax.checkpoint policy per block
  m.scan = scan                # one scanned block per tower: compile time independent of depth
  m.act = act                  # every MLP: gelu (exact) | gelu_tanh (SigLIP) | quick_gelu (OpenAI CLIP)
  m.norm_eps = norm_eps        # every LayerNorm: 1e-5 (CLIP, CoCa) | 1e-6 (SigLIP, big_vision)
  return m


def vit_config(*, patch_size: int, width: int, depth: int, heads: int, mlp_dim: int,
               **overrides) -> ml_collections.ConfigDict:
  """A `model.vision` config; layout defaults are big_vision's (patch bias, no class token,
  no pre-norm, a final norm, learned position embedding, no pooling), and no patch dropout
  (`patch_dropout`: the fraction of patch tokens each image drops in training, FLIP)."""
  cfg = dict(kind="vit", patch_size=patch_size, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
             posemb="learn", pool="none", patch_bias=True, cls_token=False, ln_pre=False, final_norm=True,
             patch_dropout=0.0)
  unknown = set(overrides) - set(cfg)
  if unknown:
    raise ValueError(f"unknown ViT option(s) {sorted(unknown)}; valid: {', '.join(cfg)}")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def vit(variant: str, **overrides) -> ml_collections.ConfigDict:
  """`vit("B/16")` or `vit("So400m/14", pool="map")`: a `model.vision` config of a named size."""
  name, _, patch = variant.partition("/")
  if name not in VIT or not patch.isdigit():
    raise ValueError(f"unknown ViT variant {variant!r}; expected NAME/PATCH with NAME in {', '.join(VIT)}")
  width, depth, mlp, heads = VIT[name]
  return vit_config(patch_size=int(patch), width=width, depth=depth, heads=heads, mlp_dim=mlp, **overrides)


def coca(size: str, *, patch: int, vocab_size: int, context_length: int) -> ml_collections.ConfigDict:
  """A CoCa `model` config of a Table 1 size: `base`, `large` or `2b`."""
  if size not in COCA:
    raise ValueError(f"unknown CoCa size {size!r}; valid: {', '.join(COCA)}")
  s = COCA[size]
  m = model_base("coca", remat="dots_no_batch")
  m.embed_dim = s["width"]
  m.init_logit_scale = 1 / 0.07
  m.max_logit_scale = 100.0
  m.vision = vit(f"{s['vision']}/{patch}")
  m.text = text("causal_cls", vocab_size=vocab_size, context_length=context_length, width=s["width"],
                depth=s["uni"], heads=s["heads"], mlp_dim=s["dec_mlp"])
  m.decoder = decoder("coca", depth=s["multi"], heads=s["heads"], mlp_dim=s["dec_mlp"], tie_embedding=s["tie"])
  m.pooler = pooler("coca_cascade", width=m.vision.width, n_queries=256, heads=s["heads"])
  return m


def coca_paper(size: str, arg: str | None) -> ml_collections.ConfigDict:
  """The full experiment of a CoCa paper size (288 px, patch 18, 64k vocabulary, batch 65,536).

  Config argument: batch, steps. Optimiser as in the paper: AdamW (beta2 0.999, weight
  decay 0.01), peak lr 8e-4 after 2k warm-up steps; caption weight 2, contrastive 1,
  label smoothing 0.1.
  """
  a = parse_arg(arg, batch=65_536, steps=500_000)
  c = base(batch_size=a.batch, total_steps=a.steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 8e-4, 0.01, 0.999
  c.optim.warmup_steps = min(2_000, a.steps // 5)
  c.model = coca(size, patch=18, vocab_size=64_000, context_length=64)
  c.model.image_size = 288
  c.loss = loss("coca", label_smoothing=0.1, caption_chunk=16)
  return c


OPEN_CLIP_VOCAB = 49_408  # open_clip's BPE; vlmjax's tokenizer shifts it by one (then 49,409: see configs)
OPEN_CLIP_ACTS = ("gelu", "quick_gelu")  # LAION-trained | OpenAI-pretrained weights


def _openclip_model(name: str, act: str) -> ml_collections.ConfigDict:
  if act not in OPEN_CLIP_ACTS:
    raise ConfigError(f"config argument act must be one of {'|'.join(OPEN_CLIP_ACTS)}, got {act!r}")
  m = model_base(name, act=act, norm_eps=1e-5)
  m.image_size = 224
  m.init_logit_scale = 1 / 0.07
  m.max_logit_scale = 100.0     # open_clip clamps exp(logit_scale) to 100 after every step
  return m


def openclip_clip(vision: str, *, text_width: int, text_heads: int, embed_dim: int,
                  act: str) -> ml_collections.ConfigDict:
  """The `model` config of an open_clip CLIP (`ViT-B-32`, `ViT-L-14`, ...): a `vision` ViT pooled at
  its class token (pre-norm, no patch bias), a 12-layer causal text tower over 77 tokens pooled at
  EOS, bias-free projections to `embed_dim`."""
  m = _openclip_model("two_tower", act)
  m.embed_dim = embed_dim
  m.init_logit_bias = None
  m.vision = vit(vision, pool="cls", cls_token=True, ln_pre=True, patch_bias=False)
  m.image_proj, m.text_proj = "linear", "linear"
  m.text = text("causal_eos", vocab_size=OPEN_CLIP_VOCAB, context_length=77, width=text_width, depth=12,
                heads=text_heads, mlp_dim=4 * text_width)
  return m


def openclip_coca(vision: str, *, width: int, heads: int, pooler_heads: int, act: str) -> ml_collections.ConfigDict:
  """The `model` config of an open_clip CoCa (`coca_ViT-B-32`, `coca_ViT-L-14`): a `vision` ViT with no
  final norm; one 256-query open_clip pooler of width `width` (its first output the image embedding,
  the rest the decoder's context); a causal text tower of `width` over 76 tokens + trailing CLS, with
  the legacy CLS mask and pre-norm decoder tokens of released weights; 12 open_clip decoder layers."""
  m = _openclip_model("coca", act)
  m.embed_dim = width
  m.vision = vit(vision, cls_token=True, ln_pre=True, patch_bias=False, final_norm=False)
  m.text = text("open_clip_coca", vocab_size=OPEN_CLIP_VOCAB, context_length=76, width=width, depth=12,
                heads=heads, mlp_dim=4 * width)
  m.decoder = decoder("open_clip", depth=12, heads=heads, mlp_dim=4 * width)
  m.pooler = pooler("open_clip", width=width, n_queries=256, heads=pooler_heads)
  return m


def openclip_experiment(model: ml_collections.ConfigDict, *, batch: int, steps: int,
                        caption_weight: float) -> ml_collections.ConfigDict:
  """A full config around an open_clip `model`: open_clip's default optimiser (AdamW 5e-4, beta2 0.98,
  weight decay 0.2, 2k warm-up steps) and loss (softmax contrastive 1; CoCa caption `caption_weight`)."""
  c = base(batch_size=batch, total_steps=steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 5e-4, 0.2, 0.98
  c.optim.warmup_steps = min(2_000, steps // 5)
  c.model = model
  c.loss = loss("clip", caption_weight=caption_weight, caption_chunk=16)
  return c


def siglip_experiment(vision: str, *, image_size: int, vocab_size: int, pad_id: int, batch: int, steps: int,
                      remat: str = "none", scan: bool = False) -> ml_collections.ConfigDict:
  """A full big_vision SigLIP config (Zhai et al., 2023): a `vision` ViT at `image_size` whose MAP head's
  output is the embedding, a bidirectional text tower of the same shape over 64 tokens pooled at the
  last position with a biased projection, tanh GELU and LayerNorm eps 1e-6 (HF SiglipModel's), t' =
  log 10, b = -10, exp(t') not clamped; the sigmoid loss; big_vision's optimiser (lr 1e-3, weight
  decay 1e-4, beta2 0.95, up to 5k warm-up steps); pixels in [-1, 1] (`data.train.normalize=siglip`, what
  the released weights were trained on). `pad_id`: the token the released weights embed at padding (1,
  </s>, for SigLIP's tokenizers; 0 for Gemma's)."""
  c = base(batch_size=batch, total_steps=steps)
  c.optim.lr, c.optim.weight_decay, c.optim.b2 = 1e-3, 1e-4, 0.95
  c.optim.warmup_steps = min(5_000, steps // 5)
  m = c.model = model_base("two_tower", dtype="bfloat16", remat=remat, scan=scan, act="gelu_tanh", norm_eps=1e-6)
  m.image_size = image_size
  m.init_logit_scale, m.max_logit_scale, m.init_logit_bias = 10.0, 0.0, -10.0
  m.vision = vit(vision, pool="map")
  m.embed_dim = m.vision.width
  m.image_proj, m.text_proj = "none", "linear_bias"   # the MAP head's output is the embedding
  width, depth, mlp, heads = VIT[vision.partition("/")[0]]
  m.text = text("siglip", vocab_size=vocab_size, context_length=64, width=width, depth=depth, heads=heads,
                mlp_dim=mlp, pad_id=pad_id)  # batches pad with 0; the tower embeds pad_id there
  c.loss = loss("siglip")
  c.data.train.normalize = "siglip"
  return c


def siglip2_objective(c: ml_collections.ConfigDict, *, decoder_depth: int, box_bins: int, distill: bool,
                      local_crops: int, local_size: int, prototypes: int, head_hidden: int, head_bottleneck: int,
                      ema_decay: float) -> None:
  """Turns a SigLIP config `c` into SigLIP 2's objective (model `siglip2`): a LocCa decoder of the text
  tower's width and heads over the unpooled image tokens, trained on captioning, referring expressions and
  grounded captioning in equal parts (caption loss weight 1); with `distill`, self-distillation (weight 1)
  and masked prediction (weight 0.25) over the last 20% of steps, against the EMA teacher.

  The paper's values as we read it: the last 20%, the two weights, 50% of patches masked. DINO's (which
  SILC and TIPS build on): local crops of 5-40% of the image, teacher / student temperatures 0.04 / 0.1.
  Crop count and size, head sizes and the EMA decay are the caller's (unstated in the paper)."""
  m = c.model
  m.name = "siglip2"
  m.decoder = decoder("cappa", width=m.text.width, depth=decoder_depth, heads=m.text.heads, mlp_dim=m.text.mlp_dim,
                      masked_pred_prob=0.0, tie_embedding=m.text.vocab_size > 10_000)
  c.loss.caption_weight = 1.0
  c.data.train.locca.update(cap=1.0, ref=1.0, gcap=1.0, box_bins=box_bins)
  m.distill_head = ml_collections.ConfigDict(dict(prototypes=prototypes if distill else 0, hidden=head_hidden,
                                                  bottleneck=head_bottleneck))
  if distill:
    c.loss.update(distill_weight=1.0, masked_weight=0.25, distill_from=0.8)
    c.loss.distill = ml_collections.ConfigDict(dict(
        local_crops=local_crops, local_size=local_size, local_scale_min=0.05, local_scale_max=0.4, mask_ratio=0.5,
        teacher_temp=0.04, student_temp=0.1))
    c.optim.ema_decay = ema_decay


# --- config groups: a config states only what differs from a named preset ------------------------

LOSS = {  # the `loss` group
    "clip": dict(contrastive="softmax", contrastive_weight=1.0, caption_weight=0.0, label_smoothing=0.0,
                 z_loss=0.0, caption_chunk=0),
    "siglip": dict(contrastive="sigmoid", contrastive_weight=1.0, caption_weight=0.0, label_smoothing=0.0,
                   z_loss=0.0, caption_chunk=0),
    "coca": dict(contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.0,
                 z_loss=0.0, caption_chunk=0),
    "cappa": dict(contrastive="none", contrastive_weight=0.0, caption_weight=1.0, label_smoothing=0.0,
                  z_loss=0.0, caption_chunk=0),
}
TEXT = {  # the `model.text` tower's layout; its sizes are given with it
    "causal_cls": dict(kind="transformer", causal=True, pool="cls", mask_pad=True, norm_tokens=True,
                       cls_mask="correct", pad_id=0),                  # CoCa: a trailing CLS token
    "causal_eos": dict(kind="transformer", causal=True, pool="eos", mask_pad=True, norm_tokens=True,
                       cls_mask="correct", pad_id=0),                  # CLIP: pooled at EOS
    "siglip": dict(kind="transformer", causal=False, pool="last", mask_pad=False, norm_tokens=True,
                   cls_mask="correct", pad_id=0),                      # SigLIP: bidirectional, last position
    "open_clip_coca": dict(kind="transformer", causal=True, pool="cls", mask_pad=True, norm_tokens=False,
                           cls_mask="legacy", pad_id=0),               # released open_clip CoCa weights
    "captioner": dict(),                                               # CapPa: no text tower, ids only
}
TEXT_SIZES = ("vocab_size", "context_length", "width", "depth", "heads", "mlp_dim")
DECODER = {  # `model.decoder`
    "coca": dict(layout="fused", tie_embedding=False),
    "open_clip": dict(layout="open_clip", tie_embedding=False),
    "cappa": dict(tie_embedding=False, masked_pred_prob=0.75),
}
POOLER = {  # `model.pooler` (CoCa)
    "coca_parallel": dict(mode="parallel", kind="coca"),
    "coca_cascade": dict(mode="cascade", kind="coca"),
    "open_clip": dict(mode="single", kind="open_clip"),
}


def _group(table: dict, name: str, what: str, sizes: tuple[str, ...], fields: dict) -> ml_collections.ConfigDict:
  """The preset `name` of `table` with `fields` set; every key of `sizes` must be given."""
  if name not in table:
    raise ConfigError(f"unknown {what} preset {name!r}; valid: {', '.join(table)}")
  values = {**table[name]}
  valid = set(values) | set(sizes)
  unknown, missing = sorted(set(fields) - valid), [k for k in sizes if k not in fields]
  if unknown or missing:
    raise ConfigError(f"{what} preset {name!r}: unknown {unknown}, missing {missing}; "
                      f"valid keys: {', '.join(sorted(valid))}")
  values.update(fields)
  return ml_collections.ConfigDict(values)


def loss(name: str, **fields) -> ml_collections.ConfigDict:
  """A `loss` group: `loss("coca", caption_weight=1.0)`."""
  return _group(LOSS, name, "loss", (), fields)


def text(name: str, **fields) -> ml_collections.ConfigDict:
  """A `model.text` group: `text("causal_cls", vocab_size=259, context_length=40, width=128, depth=2, heads=4,
  mlp_dim=512)`; `captioner` (CapPa, no tower) takes only vocab_size and context_length."""
  sizes = TEXT_SIZES[:2] if name == "captioner" else TEXT_SIZES
  return _group(TEXT, name, "text tower", sizes, fields)


def decoder(name: str, **fields) -> ml_collections.ConfigDict:
  """A `model.decoder` group: `decoder("coca", depth=2, heads=4, mlp_dim=512)` (CapPa's also takes width)."""
  sizes = ("width", "depth", "heads", "mlp_dim") if name == "cappa" else ("depth", "heads", "mlp_dim")
  return _group(DECODER, name, "decoder", sizes, fields)


def pooler(name: str, **fields) -> ml_collections.ConfigDict:
  """A CoCa `model.pooler` group: `pooler("coca_parallel", width=128, n_queries=16, heads=4)`."""
  return _group(POOLER, name, "pooler", ("width", "n_queries", "heads"), fields)
