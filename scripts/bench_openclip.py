"""open_clip's train step on the same synthetic work as scripts/bench_step.py, for a ratio from one run.

    python scripts/bench_openclip.py --model coca_b16 --batch 256 --steps 20 [--compile] [--json]
    python scripts/bench_openclip.py --model siglip_b16 --batch 256 --steps 20 --compile

Models: `coca_b16` is open_clip's `coca_ViT-B-32` with patch 16 (vlmjax's
configs/openclip_coca_b16.py), `siglip_b16` is `ViT-B-16-SigLIP` (configs/siglip_b16.py).
bf16 autocast, fused AdamW, random images and captions; CoCa's loss is open_clip's
CoCaLoss (contrastive 1 + caption 2), SigLIP's its SigLipLoss. Needs torch and
open_clip_torch (not vlmjax dependencies).
"""

from __future__ import annotations

import argparse
import json
import time

import open_clip
import torch
from open_clip.loss import CoCaLoss, SigLipLoss

MODELS = {
    "coca_b16": ("coca_ViT-B-32", {"vision_cfg": {"patch_size": 16}}),
    "siglip_b16": ("ViT-B-16-SigLIP", {}),
}


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--model", choices=MODELS, required=True)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--compile", action="store_true", help="torch.compile the model")
  p.add_argument("--json", action="store_true")
  args = p.parse_args()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  name, override = MODELS[args.model]
  cfg = open_clip.get_model_config(name)
  for k, v in override.items():
    cfg[k].update(v)
  cfg.pop("custom_text", None)
  model = (open_clip.CoCa(**cfg) if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP(**cfg)).to(device)
  n_params = sum(x.numel() for x in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
  if args.model == "coca_b16":
    loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)
  else:
    loss_fn = SigLipLoss()
  fwd = torch.compile(model) if args.compile else model
  size = cfg["vision_cfg"]["image_size"]
  size = size if isinstance(size, int) else size[0]
  ctx = cfg["text_cfg"]["context_length"]
  vocab = cfg["text_cfg"]["vocab_size"]
  g = torch.Generator().manual_seed(0)
  images = torch.randn(args.batch, 3, size, size, generator=g).to(device)
  text = torch.randint(1, vocab, (args.batch, ctx), generator=g).to(device)

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
      out = fwd(images, text)
      if args.model == "coca_b16":
        loss = loss_fn(out["image_features"], out["text_features"], out["logits"], out["labels"],
                       out["logit_scale"])[0] + loss_fn(out["image_features"], out["text_features"], out["logits"],
                                                        out["labels"], out["logit_scale"])[1]
      else:
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  t = time.perf_counter()
  for _ in range(args.warmup):
    step()
  if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
  warm_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  if device == "cuda":
    torch.cuda.synchronize()
  step_s = (time.perf_counter() - t) / args.steps
  result = {"impl": "open_clip" + (" compile" if args.compile else " eager"), "model": args.model,
            "params": n_params, "batch": args.batch, "examples_per_sec": args.batch / step_s,
            "step_ms": 1e3 * step_s, "warmup_s": warm_s, "loss": float(loss),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
  print(json.dumps(result) if args.json else "\n".join(f"{k:<20} {v}" for k, v in result.items()))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
