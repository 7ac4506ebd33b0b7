"""open_clip's train step on the same synthetic work as scripts/bench_step.py, for a ratio from one run.

    python scripts/bench_openclip.py --model coca_b16 --batch 256 --steps 20 [--compile] [--json]
    python scripts/bench_openclip.py --model siglip_b16 --batch 256 --steps 20 --compile
    python scripts/bench_openclip.py --model coca_b16 --tiny --batch 4 --steps 2 --compile   # CPU check

Models: `coca_b16` is open_clip's `coca_ViT-B-32` with patch 16 (vlmjax's
configs/openclip_coca_b16.py), `siglip_b16` is `ViT-B-16-SigLIP` (configs/siglip_b16.py).
`--tiny` builds the same model family (same classes, same code paths) at a toy size
(2 layers, width 64, 32 px images, 16 tokens, 512-token vocabulary) to check the script on CPU.

The step is open_clip_train's: model in train mode, bf16 autocast around the forward and
the loss, global-norm gradient clip 1 (vlmjax's default optimiser; `--grad-clip 0` drops
it), AdamW (fused on CUDA; no weight decay on gains and biases; the vlmjax config's lr,
weight decay, beta2 and eps 1e-6), then the logit-scale clamp. CoCa's loss is open_clip's CoCaLoss
(contrastive 1 + caption 2, one call, the two terms summed), SigLIP's its SigLipLoss
(logit scale log 10, bias -10). TF32 on, `--compile` is `torch.compile(model)` in the
default mode. The batch is built as bench_step.py builds it (same seed: caption, EOS,
zero padding), put on the device once and reused every step. Warm-up (at least one step,
which compiles with `--compile`) is untimed; peak memory counts the timed steps only.
Needs torch and open_clip_torch (not vlmjax dependencies). `--json` prints one JSON line
on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time

import numpy as np
import open_clip
import torch
from open_clip.loss import CoCaLoss, SigLipLoss

# name, config overrides, optimiser (lr, weight decay, beta2) as in the vlmjax config.
MODELS = {
    "coca_b16": ("coca_ViT-B-32", {"vision_cfg": {"patch_size": 16}}, (5e-4, 0.2, 0.98)),
    "siglip_b16": ("ViT-B-16-SigLIP", {"init_logit_scale": math.log(10)}, (1e-3, 1e-4, 0.95)),
}

# --tiny: the same families at a toy size.
TINY = {
    "coca_b16": {
        "embed_dim": 64,  # the pooler's tokens are the decoder's cross-attention input (its width)
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                       "attn_pooler_queries": 8, "attn_pooler_heads": 2},
        "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 64, "heads": 2, "layers": 2},
        "multimodal_cfg": {"context_length": 16, "vocab_size": 512, "width": 64, "heads": 2, "layers": 2,
                           "attn_pooler_heads": 2},
    },
    "siglip_b16": {
        "embed_dim": 64,  # the MAP head's output (vision width) is the image embedding
        "vision_cfg": {"image_size": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 64, "heads": 2, "layers": 2},
    },
}
# timm keyword overrides for the tiny SigLIP image tower (open_clip's TimmModel passes none).
TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def merge(cfg: dict, override: dict) -> dict:
  for k, v in override.items():
    if isinstance(v, dict):
      cfg[k] = merge(dict(cfg.get(k) or {}), v)
    else:
      cfg[k] = v
  return cfg


@contextlib.contextmanager
def timm_overrides(kwargs: dict):
  """Adds `kwargs` to every timm.create_model call open_clip makes while the model is built."""
  if not kwargs:
    yield
    return
  import timm
  orig = timm.create_model
  timm.create_model = lambda *a, **kw: orig(*a, **{**kw, **kwargs})
  try:
    yield
  finally:
    timm.create_model = orig


def build_model(model: str, tiny: bool):
  name, override, _ = MODELS[model]
  cfg = copy.deepcopy(open_clip.get_model_config(name))
  merge(cfg, override)
  if tiny:
    merge(cfg, TINY[model])
  cfg.pop("custom_text", None)  # both are custom-text models: CoCa or CustomTextCLIP
  if "multimodal_cfg" in cfg:
    cls = open_clip.CoCa  # returns a dict
  else:
    cls, cfg["output_dict"] = open_clip.CustomTextCLIP, True  # as open_clip_train builds it
  with timm_overrides(TINY_TIMM if tiny and "timm_model_name" in cfg["vision_cfg"] else {}):
    model = cls(**cfg)
  if cls is open_clip.CoCa:
    # open_clip 3.3 leaves the decoder's output projection as torch.empty (its
    # MultimodalTransformer.init_parameters is never called); give it the init that method
    # intends, so the loss is finite and the run deterministic. Timing is unaffected.
    proj = model.text_decoder.text_projection
    torch.nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
  return model, cfg


def random_batch(batch: int, size: int, ctx: int, vocab: int):
  """bench_step.py's random_batch (same seed and layout), images as NCHW."""
  rng = np.random.default_rng(0)
  text = rng.integers(3, vocab, size=(batch, ctx)).astype(np.int64)
  lengths = rng.integers(ctx // 4, ctx, size=batch)
  text[:, 0] = 1
  for i, n in enumerate(lengths):  # a caption of n tokens, EOS, then padding
    text[i, n] = 2
    text[i, n + 1:] = 0
  image = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  return torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(text)


def make_optimizer(model, lr, wd, b2, fused):
  """open_clip_train's AdamW parameter groups: no weight decay on gains, biases, logit scale."""
  exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  groups = [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}]
  return torch.optim.AdamW(groups, lr=lr, betas=(0.9, b2), eps=1e-6, fused=fused)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", choices=MODELS, required=True)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3, help="untimed steps (at least 1; the first compiles)")
  p.add_argument("--compile", action="store_true", help="torch.compile the model (default mode)")
  p.add_argument("--grad-clip", type=float, default=1.0,
                 help="global-norm gradient clip, vlmjax's default (0: none, open_clip_train's default)")
  p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                 help="bf16 autocast (the benchmark) or plain fp32 (faster on CPUs without bf16 units)")
  p.add_argument("--tiny", action="store_true", help="same model family at a toy size, for CPU checks")
  p.add_argument("--json", action="store_true", help="one JSON line on stdout")
  args = p.parse_args()
  if args.steps < 1:
    p.error("--steps must be at least 1")
  warmup = max(1, args.warmup)

  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if cuda:
    torch.set_float32_matmul_precision("high")  # TF32 (the legacy allow_tf32 flags trip inductor on torch 2.9+)
    torch.backends.cudnn.benchmark = True
  torch.manual_seed(0)

  model, cfg = build_model(args.model, args.tiny)
  model = model.to(device).train()
  n_params = sum(x.numel() for x in model.parameters())
  lr, wd, b2 = MODELS[args.model][2]
  opt = make_optimizer(model, lr, wd, b2, fused=cuda)
  if args.model == "coca_b16":
    loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0, cache_labels=True)
  else:
    loss_fn = SigLipLoss()
  fwd = torch.compile(model) if args.compile else model

  size = cfg["vision_cfg"]["image_size"]
  size = size if isinstance(size, int) else size[0]
  ctx, vocab = cfg["text_cfg"]["context_length"], cfg["text_cfg"]["vocab_size"]
  images, text = random_batch(args.batch, size, ctx, vocab)
  images, text = images.to(device), text.to(device)  # on the device once, the same every step

  amp = ((lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if args.precision == "bf16"
         else contextlib.nullcontext)

  def step():
    opt.zero_grad(set_to_none=True)
    with amp():
      out = fwd(images, text)
      if args.model == "coca_b16":
        clip_loss, caption_loss = loss_fn(out["image_features"], out["text_features"], out["logits"],
                                          out["labels"], out["logit_scale"])
        loss = clip_loss + caption_loss
      else:
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    loss.backward()
    if args.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    opt.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, math.log(100))
    return loss

  def sync():
    if cuda:
      torch.cuda.synchronize()

  sync()
  warm_steps = []
  for _ in range(warmup):
    t = time.perf_counter()
    step()
    sync()
    warm_steps.append(time.perf_counter() - t)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  t = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  step_s = (time.perf_counter() - t) / args.steps

  result = {
      "impl": "open_clip" + (" compile" if args.compile else " eager"), "model": args.model + ("_tiny" if args.tiny else ""),
      "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": args.precision, "params": n_params, "batch": args.batch,
      "steps": args.steps, "examples_per_sec": args.batch / step_s, "step_ms": 1e3 * step_s,
      "warmup_s": sum(warm_steps), "first_step_s": warm_steps[0],
      "last_warmup_step_ms": 1e3 * warm_steps[-1], "loss": float(loss.detach()),
      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
      "torch": torch.__version__, "open_clip": open_clip.__version__,
  }
  if args.compile:
    from torch._dynamo.utils import counters
    result["dynamo_graphs"] = counters["stats"].get("unique_graphs", 0)
    result["graph_breaks"] = sum(counters["graph_break"].values())
  if args.json:
    sys.stdout.write(json.dumps(result) + "\n")
  else:
    for k, v in result.items():
      print(f"{k:<20} {v:,.3f}" if isinstance(v, float) else f"{k:<20} {v}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
