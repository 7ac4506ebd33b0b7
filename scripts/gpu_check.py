"""Attention on the device: does `model.attention=auto` take cuDNN's fused kernel where it should,
and does it compute what XLA's attention computes? Then: how many fused-attention calls the real
train steps compile to.

    python scripts/gpu_check.py [--batch 8] [--json]

For each attention shape the B/16 configs use (ViT self-attention, CoCa's text tower with its
padding mask, the decoder's causal self- and cross-attention, the attentional pooler, SigLIP's
text tower), in bfloat16: the kernel `auto` picked (cudnn | xla, read off the compiled HLO),
and the relative error of the output and of the q/k/v gradients against float32 XLA attention
on the same inputs (bf16 lands near 1e-2 or below); each row prints as it is measured. With
`--train-steps`, also the number of cuDNN fused-attention custom calls in the compiled
openclip_coca_b16 and siglip_b16 train steps (bench_step.py reports the same count for the step
it times, `fused_attention_calls`). On a CPU everything is XLA and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vlmjax import config, sharding, train, train_state  # noqa: E402
from vlmjax.models import layers  # noqa: E402

from bench_step import fused_calls  # noqa: E402 -- cuDNN fused-attention custom calls in HLO text

# name: (T queries, S keys, heads, head dim, causal, padding mask)
SHAPES = {
    "vit_self": (197, 197, 12, 64, False, False),
    "coca_text_masked": (77, 77, 8, 64, True, True),
    "decoder_causal": (76, 76, 8, 64, True, False),
    "decoder_cross": (76, 255, 8, 64, False, False),  # the pooler's outputs after the first
    "pooler": (256, 197, 8, 64, False, False),
    "siglip_text": (64, 64, 12, 64, False, False),
    "siglip_map_head": (1, 196, 12, 64, False, False),
}


def check_shape(name: str, batch: int, rng: np.random.Generator) -> dict:
  T, S, H, K, causal, padded = SHAPES[name]
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, H, K)), jnp.float32) for n in (T, S, S))
  mask = None
  if padded:
    lengths = rng.integers(S // 4, S, size=batch)
    mask = jnp.asarray(np.arange(S)[None, None, None, :] < lengths[:, None, None, None])
    mask = jnp.broadcast_to(mask, (batch, 1, T, S))

  def attend(q, k, v, impl, dtype):
    out = layers.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask,
                                       causal=causal, impl=impl)
    return out.astype(jnp.float32)

  def loss(q, k, v, impl, dtype, w):
    return jnp.sum(attend(q, k, v, impl, dtype) * w)

  w = jnp.asarray(rng.normal(size=(batch, T, H, K)), jnp.float32)
  fwd = jax.jit(attend, static_argnums=(3, 4))
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
  grad_bf16 = grad.lower(q, k, v, None, jnp.bfloat16, w).compile()
  hlo = grad_bf16.as_text()
  ref, ref_g = fwd(q, k, v, "xla", jnp.float32), grad(q, k, v, "xla", jnp.float32, w)
  out, out_g = fwd(q, k, v, None, jnp.bfloat16), grad_bf16(q, k, v, w)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  return {"shape": f"B{batch} T{T} S{S} H{H} K{K}" + (" causal" if causal else "") + (" mask" if padded else ""),
          "kernel": "cudnn" if fused_calls(hlo) else "xla", "rel_err_out": rel(out, ref),
          "rel_err_grad": max(rel(a, b) for a, b in zip(out_g, ref_g)),
          "finite": bool(jnp.isfinite(out).all())}


def train_step_fused_calls(spec: str, batch: int) -> int:
  cfg = config.load(spec, [("batch_size", str(batch))])
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          s.abstract_state, s.state_shardings)
  S, L = cfg.model.image_size, cfg.model.text.context_length
  b = {"image": jax.ShapeDtypeStruct((batch, S, S, 3), jnp.float32, sharding=s.batch_sharding),
       "text": jax.ShapeDtypeStruct((batch, L), jnp.int32, sharding=s.batch_sharding)}
  return fused_calls(train.compile_train_step(cfg, s).lower(abstract, b).compile().as_text())


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--json", action="store_true")
  p.add_argument("--train-steps", action="store_true", help="also compile the two B/16 train steps")
  args = p.parse_args()
  rng = np.random.default_rng(0)
  say = (lambda *_: None) if args.json else (lambda line: print(line, flush=True))
  result = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "attention": {}}
  say(f"backend {result['backend']} ({result['device']})")
  say(f"{'attention':<18} {'shape':<32} {'kernel':<6} {'rel err out':>11} {'rel err grad':>12}")
  for n in SHAPES:
    try:
      r = result["attention"][n] = check_shape(n, args.batch, rng)
    except Exception as e:  # noqa: BLE001 -- report the shape that fails and go on to the next
      result["attention"][n] = {"error": config.one_line(e)}
      say(f"{n:<18} failed: {result['attention'][n]['error']}")
      continue
    say(f"{n:<18} {r['shape']:<32} {r['kernel']:<6} {r['rel_err_out']:>11.2e} {r['rel_err_grad']:>12.2e}"
        + ("" if r["finite"] else "  NON-FINITE"))
  if args.train_steps:
    result["train_step_fused_attention_calls"] = {}
    for spec in ("configs/openclip_coca_b16.py", "configs/siglip_b16.py"):
      n = result["train_step_fused_attention_calls"][spec] = train_step_fused_calls(spec, args.batch)
      say(f"{spec}: {n} cuDNN fused-attention calls in the compiled train step")
  if args.json:
    print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
