"""CoCa caption weight: does adding the captioning loss help or hurt the contrastive objective?

Varies loss.caption_weight (lambda_cap) over 0 (pure contrastive: no caption loss), 1 and 2
(coca_tiny's default), with contrastive_weight 1, two seeds each, on the shapes set. Each final
checkpoint is evaluated: zero-shot colour x shape classification and retrieval (512 validation
examples), greedy captioning (64). Compare train/contrastive_loss and the evals across lambda
(the total loss is not comparable: it adds lambda x caption loss).

    vlmjax sweep experiments/caption_weight.py --workdir runs/caption_weight
    vlmjax report runs/caption_weight --last 3 --metric train/contrastive_loss \
      --metric train/caption_loss --metric eval/zs/top1 --metric eval/ret/i2t_r1 --metric eval/cap/cider

6 runs of 30 steps (batch 32), each then evaluated; about 10 minutes on 2 busy CPU cores, one run
at a time. Results: experiments/README.md.
"""


def get_sweep():
  return dict(
      # evals=0: coca_tiny's own evaluators (test split, during training) off; each run is evaluated
      # once, after training, by `evals` below (the validation split the results were measured on).
      base="configs/coca_tiny.py:steps=30,batch=32,evals=0",
      fixed={"log_every": 5, "ckpt_every": 15},
      grid={"loss.caption_weight": [0.0, 1.0, 2.0]},
      labels={"loss.caption_weight": "lambda_cap"},
      evals={"zs": "zero_shot:synthetic:shapes:validation", "zs.num_examples": 512,
             "ret": "retrieval:synthetic:shapes:validation", "ret.num_examples": 512,
             "cap": "captioning:synthetic:shapes:validation", "cap.num_examples": 64},
      seeds=[0, 1],
  )
