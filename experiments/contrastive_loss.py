"""Contrastive loss: softmax (CLIP) vs sigmoid (SigLIP) on the same two-tower model.

The arms differ only in loss.contrastive and the loss's recommended initial temperature and
bias (softmax: scale 1/0.07, bias 0 (unused); sigmoid: scale 10, bias -10), zipped together so
each arm gets its own init; the towers (MAP image pooling, bidirectional text, EOS pooling) are
siglip_tiny's in both. Two seeds each. The two losses have different scales, so compare the arms
by the evaluations run on each final checkpoint (zero-shot colour x shape classification and
image-text retrieval on 512 validation examples), not by train/loss.

    vlmjax sweep experiments/contrastive_loss.py --workdir runs/contrastive_loss
    vlmjax report runs/contrastive_loss --last 3 --metric train/contrastive_loss \
      --metric eval/zs/top1 --metric eval/ret/i2t_r1 --metric eval/ret/t2i_r1

4 runs of 80 steps (batch 32), each then evaluated; about 6 minutes on 2 busy CPU cores, one run
at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="configs/siglip_tiny.py:steps=80,batch=32",
      fixed={"log_every": 5, "ckpt_every": 40},
      zip={"loss.contrastive": ["softmax", "sigmoid"],
           "model.init_logit_scale": [1 / 0.07, 10.0],
           "model.init_logit_bias": [0.0, -10.0]},
      labels={"loss.contrastive": "loss", "model.init_logit_scale": None, "model.init_logit_bias": None},
      evals={"zs": "zero_shot:synthetic:shapes:validation", "zs.num_examples": 512,
             "ret": "retrieval:synthetic:shapes:validation", "ret.num_examples": 512},
      seeds=[0, 1],
  )
