"""CoCa attentional poolers: parallel vs cascade.

parallel: the contrastive query and the captioning queries each attend to the image tokens;
cascade: the contrastive query pools the captioning queries' output (CoCa paper, Section 3.2).
Everything else is coca_tiny; two seeds each. Compare the losses (same weights in both arms, so
the total loss is comparable too) and the evaluations of each final checkpoint: zero-shot
classification and retrieval (512 validation examples), greedy captioning (64).

    vlmjax sweep experiments/pooler.py --workdir runs/pooler
    vlmjax report runs/pooler --last 3 --metric train/loss --metric train/contrastive_loss \
      --metric eval/zs/top1 --metric eval/ret/i2t_r1 --metric eval/cap/cider

4 runs of 60 steps (batch 32), each then evaluated; about 8 minutes on 2 busy CPU cores, one run
at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      # evals=0: coca_tiny's own evaluators (test split, during training) off; each run is evaluated
      # once, after training, by `evals` below (the validation split the results were measured on).
      base="configs/coca_tiny.py:steps=60,batch=32,evals=0",
      fixed={"log_every": 5, "ckpt_every": 30},
      grid={"model.pooler.mode": ["parallel", "cascade"]},
      labels={"model.pooler.mode": "pooler"},
      evals={"zs": "zero_shot:synthetic:shapes:validation", "zs.num_examples": 512,
             "ret": "retrieval:synthetic:shapes:validation", "ret.num_examples": 512,
             "cap": "captioning:synthetic:shapes:validation", "cap.num_examples": 64},
      seeds=[0, 1],
  )
