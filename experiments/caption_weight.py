"""CoCa caption weight: does adding the captioning loss help or hurt the contrastive objective?

Varies loss.caption_weight (lambda_cap) over 0 (pure contrastive: the decoder gets no gradient),
1 and 2 (coca_tiny's default), with contrastive_weight 1, two seeds each, on the shapes set.
Compare train/contrastive_loss across lambda (the total loss is not comparable: it adds lambda x
caption loss) and, once coca_tiny has evaluators, the eval/ metrics.

    vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight
    vlmjax report runs/caption_weight

6 runs of 30 steps (batch 32); about 7 minutes on 2 busy CPU cores, one run at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="configs/coca_tiny.py:steps=30,batch=32",
      fixed={"log_every": 5, "ckpt_every": 15},
      grid={"loss.caption_weight": [0.0, 1.0, 2.0]},
      labels={"loss.caption_weight": "lambda_cap"},
      seeds=[0, 1],
  )
