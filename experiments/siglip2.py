"""SigLIP 2's objective, piece by piece: SigLIP vs + LocCa decoder vs + LocCa + self-distillation and masked
prediction, at equal steps, on the multi-object shapes set (synthetic:shapes_multi: 2-4 objects per image,
each with its box and "small red circle").

All three arms train the same `siglip2` model of configs/siglip2_tiny.py (so parameter counts and data
order are equal) for 300 steps at batch 64; what differs is the objective: `siglip` (the sigmoid loss
only: no caption loss, no decoder tasks, no distillation), `locca` (+ the decoder on captioning,
referring expressions and grounded captioning, a third each, caption weight 1), `siglip2` (+ over the
last 20% of steps, self-distillation of 4 local views of 32 px against the EMA teacher's whole image,
weight 1, and masked prediction of half the patches, weight 0.25). Evaluated at the end on the
validation split: zero-shot (the largest object's class), retrieval, referring-expression accuracy
(box IoU >= 0.5) and the dense-feature probe's mean IoU. Two seeds each.

    vlmjax sweep experiments/siglip2.py --workdir runs/siglip2
    vlmjax report runs/siglip2 --metric eval/zs/top1 --metric eval/ret/i2t_r1 --metric eval/ret/t2i_r1 \
      --metric eval/ref/accuracy --metric eval/ref/mean_iou --metric eval/dense/miou \
      --metric train/contrastive_loss

6 runs. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="experiments/configs/siglip2_study.py",
      zip={"loss.caption_weight": [0.0, 1.0, 1.0], "data.train.locca.cap": [0.0, 1.0, 1.0],
           "data.train.locca.ref": [0.0, 1.0, 1.0], "data.train.locca.gcap": [0.0, 1.0, 1.0],
           "loss.distill_weight": [0.0, 0.0, 1.0], "loss.masked_weight": [0.0, 0.0, 0.25]},
      labels={"loss.caption_weight": "locca", "loss.distill_weight": "distill", "data.train.locca.cap": None,
              "data.train.locca.ref": None, "data.train.locca.gcap": None, "loss.masked_weight": None},
      seeds=[0, 1],
  )
