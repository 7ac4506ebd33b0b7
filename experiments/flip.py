"""FLIP (Li et al., 2023): patch dropout 0 / 0.5 / 0.75 at equal training compute.

siglip_tiny with the softmax loss (CLIP, as FLIP) at 64 px (8x8 = 64 patches of 8 px; at 32 px
the tiny model has only 16 patches and its FLOPs are mostly text), batch 32. Dropping patches
makes a step cheaper, so at equal compute the dropped arms take more steps: `vlmjax info` counts
0.351 / 0.224 / 0.164 GFLOP per example for p = 0 / 0.5 / 0.75, hence 240 / 380 / 520 steps
(0.351 x 240 = 84.2, 0.224 x 380 = 85.0, 0.164 x 520 = 85.1 GFLOP per batch slot over a run: equal
within 1%). Every run is evaluated four times during training, on every patch (evaluation never
drops), on 512 validation examples: zero-shot classification over the 32 classes and retrieval.
Two seeds each.

    vlmjax sweep experiments/flip.py --workdir runs/flip
    vlmjax report runs/flip --last 1 --metric train/loss --metric eval/zs/top1 --metric eval/ret/i2t_r1 \
      --metric eval/ret/t2i_r1
    python scripts/flip_plot.py runs/flip    # accuracy against training FLOPs

6 runs; about 8 minutes on 2 quiet CPU cores, one run at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="experiments/configs/flip_tiny.py",  # siglip_tiny, softmax, 64 px, batch 32, evaluated during training
      zip={"model.vision.patch_dropout": [0.0, 0.5, 0.75], "total_steps": [240, 380, 520],
           "evals.zs.every": [60, 95, 130], "evals.ret.every": [60, 95, 130]},  # 4 evaluations per run
      labels={"model.vision.patch_dropout": "p", "total_steps": "steps", "evals.zs.every": None,
              "evals.ret.every": None},
      seeds=[0, 1],
  )
