"""Contrastive loss: softmax (CLIP) vs sigmoid (SigLIP) on the same two-tower model.

The arms differ only in loss.contrastive and the loss's recommended initial temperature and
bias (softmax: scale 1/0.07, bias 0 (unused); sigmoid: scale 10, bias -10), zipped together so
each arm gets its own init; the towers (MAP image pooling, bidirectional text, EOS pooling) are
siglip_tiny's in both. Two seeds each. The two losses have different scales, so compare them with
eval/ metrics (retrieval, zero-shot) once siglip_tiny has evaluators, not by train/loss.

    vlmjax sweep experiments/contrastive_loss.py --workdir runs/contrastive_loss
    vlmjax report runs/contrastive_loss

4 runs of 80 steps (batch 32); about 4 minutes on a 2-core CPU, one run at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="configs/siglip_tiny.py:steps=80,batch=32",
      fixed={"log_every": 5, "ckpt_every": 40},
      zip={"loss.contrastive": ["softmax", "sigmoid"],
           "model.init_logit_scale": [1 / 0.07, 10.0],
           "model.init_logit_bias": [0.0, -10.0]},
      labels={"loss.contrastive": "loss", "model.init_logit_scale": None, "model.init_logit_bias": None},
      seeds=[0, 1],
  )
