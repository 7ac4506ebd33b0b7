"""What vlmjax knows about accelerators: dense bf16 matrix-multiply peaks by `device_kind`, the
basis of MFU (`train/mfu` in metrics.jsonl, `scripts/bench_step.py`).

H200: the rate measured on the lent card (the datasheet says 989 TFLOP/s); the rest are datasheet
figures. A kind not listed (CPU, a new chip) has no MFU; add a line here to get one.
"""

from __future__ import annotations

PEAK_FLOPS = {
    "NVIDIA H200": 790e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


def peak_flops(kind: str) -> float | None:
  """The known peak FLOP/s of one device of `kind`: the exact name, else the longest known name
  inside it (`NVIDIA H200 NVL` -> `NVIDIA H200`); None when unknown."""
  if kind in PEAK_FLOPS:
    return PEAK_FLOPS[kind]
  known = [k for k in PEAK_FLOPS if k in kind]
  return PEAK_FLOPS[max(known, key=len)] if known else None
