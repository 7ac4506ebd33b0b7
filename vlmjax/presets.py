"""Named architecture sizes, so configs say `vit("B/16")` instead of repeating numbers.

ViT sizes follow big_vision (Ti, S, B, L, H, g, So400m; Zhai et al. 2022, Alabdulmohsin
et al. 2023); CoCa sizes follow Table 1 of the CoCa paper (Yu et al., 2022).
"""

from __future__ import annotations

import ml_collections

from vlmjax.config import base, parse_arg

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
  no pre-norm, a final norm, learned position embedding, no pooling)."""
  cfg = dict(patch_size=patch_size, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim,
             posemb="learn", pool="none", patch_bias=True, cls_token=False, ln_pre=False, final_norm=True)
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
  m.vision = vit(f"{s['vision']}/{patch}")
  m.text = ml_collections.ConfigDict(dict(
      vocab_size=vocab_size, context_length=context_length, width=s["width"], depth=s["uni"],
      heads=s["heads"], mlp_dim=s["dec_mlp"], causal=True, pool="cls", mask_pad=True, norm_tokens=True,
      cls_mask="correct"))
  m.decoder = ml_collections.ConfigDict(dict(depth=s["multi"], heads=s["heads"], mlp_dim=s["dec_mlp"],
                                             layout="fused", tie_embedding=s["tie"]))
  m.pooler = ml_collections.ConfigDict(dict(mode="cascade", kind="coca", width=m.vision.width,
                                            n_queries=256, heads=s["heads"]))
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
  c.loss = ml_collections.ConfigDict(dict(
      contrastive="softmax", contrastive_weight=1.0, caption_weight=2.0, label_smoothing=0.1, z_loss=0.0))
  return c
