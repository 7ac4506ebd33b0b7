"""CoCa attentional poolers: parallel vs cascade.

parallel: the contrastive query and the captioning queries each attend to the image tokens;
cascade: the contrastive query pools the captioning queries' output (CoCa paper, Section 3.2).
Everything else is coca_tiny; two seeds each. Compare train/contrastive_loss and
train/caption_loss (same weights in both arms, so the total loss is comparable too).

    vlmjax sweep experiments/pooler.py --workdir runs/pooler
    vlmjax report runs/pooler

4 runs of 60 steps (batch 32); about 7 minutes on 2 busy CPU cores, one run at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      base="configs/coca_tiny.py:steps=60,batch=32",
      fixed={"log_every": 5, "ckpt_every": 30},
      grid={"model.pooler.mode": ["parallel", "cascade"]},
      labels={"model.pooler.mode": "pooler"},
      seeds=[0, 1],
  )
