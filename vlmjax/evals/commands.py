"""`vlmjax eval` and `vlmjax caption`: evaluators and decoding on a workdir's checkpoint."""

from __future__ import annotations

import json
import os

import ml_collections

from vlmjax import distributed
from vlmjax.errors import ConfigError


def load_config(workdir: str, overrides) -> ml_collections.ConfigDict:
  """The resolved config a run wrote (brought up to date, evaluators included), with `--config.*`
  overrides applied (`evals.NAME=TYPE:SOURCE` adds an evaluator), validated."""
  from vlmjax import workdir as workdirs  # noqa: PLC0415
  return _updated(workdirs.read_config(workdir), overrides)


def load_config_file(path: str, overrides) -> ml_collections.ConfigDict:
  """`load_config` for a config.json at any path (`vlmjax train --config RUN/config.json`)."""
  from vlmjax import workdir as workdirs  # noqa: PLC0415
  return _updated(workdirs.read_config_file(path), overrides)


def _updated(cfg: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  from vlmjax import config  # noqa: PLC0415
  from vlmjax.evals import common, registry  # noqa: PLC0415
  registry.add_new_fields(cfg)
  registry.apply_overrides(cfg, overrides)
  config.validate(cfg)
  for name in cfg.evals.keys():
    registry.validate(name, cfg.evals[name])
  common.check_ema(cfg)
  return cfg


def evaluate_workdir(workdir: str, overrides=(), step: int | None = None):
  """Runs every evaluator on a checkpoint; writes `<workdir>/eval/<step>.json` (and the captions), appends to
  metrics.jsonl and TensorBoard (`results`). Returns (step, metrics, path, tables)."""
  import jax  # noqa: PLC0415
  from vlmjax import train_state  # noqa: PLC0415
  from vlmjax.evals import results, suite  # noqa: PLC0415
  cfg = load_config(workdir, overrides)
  if not cfg.evals:
    raise ConfigError(f"{workdir}/config.json defines no evaluators (cfg.evals is empty)")
  wanted = sorted({cfg.evals[name].params for name in cfg.evals.keys()})  # "params" and/or "ema"
  s, trees, step = train_state.restore_trees(workdir, cfg, step, wanted)
  prepared = suite.prepare_all(cfg, s.mesh)
  metrics = prepared.run(s.graphdef, trees.get("params"), ema=trees.get("ema"), step=step, final=True)
  path = os.path.join(workdir, "eval", f"{step}.json")
  if jax.process_index() == 0:
    results.write(workdir, step, metrics, prepared.outputs, prepared.tables)
    results.append_to_logs(workdir, step, metrics)  # one home: metrics.jsonl and TensorBoard too
  return step, metrics, path, prepared.tables


def _eval(args, overrides) -> int:
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  if (args.suite is None) != (args.suite_root is None):
    raise ConfigError("--suite NAME and --suite-root DIR go together (the named task list, and the folder "
                      "holding its datasets)")
  if args.suite is not None:  # the suite as one more evaluator, named after it
    overrides = [(f"evals.{args.suite}", f"suite:{args.suite_root}"), (f"evals.{args.suite}.suite", args.suite),
                 *overrides]  # then --config.evals.NAME.FIELD=V may change it
  step, metrics, path, tables = evaluate_workdir(args.workdir, overrides, args.step)
  import jax  # noqa: PLC0415
  if jax.process_index():  # process 0 prints (and wrote the file)
    return 0
  width = max(map(len, metrics))
  for key, value in metrics.items():
    print(f"{key:<{width}}  {value:.4f}")
  for filename, text in tables.items():
    if filename.endswith(".md"):
      print(f"\n{text}", end="")
  print(f"step {step}: wrote {path}" + (f" and eval/{step}/{', '.join(tables)}" if tables else ""))
  return 0


def _caption(args, overrides) -> int:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from vlmjax import models, train_state  # noqa: PLC0415
  from vlmjax.data import transforms  # noqa: PLC0415
  from vlmjax.evals import captioning, data, decode  # noqa: PLC0415
  cfg = load_config(args.workdir, overrides)
  if not hasattr(models.REGISTRY.lookup(cfg.model.name), "caption_context"):
    raise ConfigError(f"vlmjax caption needs a captioning model (model.name coca or captioner); "
                      f"{args.workdir} holds a {cfg.model.name!r} model")
  context_length = cfg.model.text.context_length
  max_len = context_length if args.max_len is None else args.max_len  # default: as long as the model reads
  captioning.check_decoding("vlmjax caption", max_len=max_len, beam_size=args.beam_size, top_k=args.top_k,
                          top_p=args.top_p, temperature=args.temperature, vocab_size=cfg.model.text.vocab_size,
                          prefix="--")
  if max_len > context_length:
    raise ConfigError(f"--max-len {max_len} exceeds model.text.context_length={context_length}")
  images, read = [], _image_reader(cfg, args.image_mode)
  for path in args.images:
    try:
      with open(path, "rb") as f:
        images.append(read(f.read()))
    except OSError as e:
      raise ConfigError(f"cannot read image {path!r}: {e.strerror or e}") from None
    except transforms.BadImage as e:
      raise ConfigError(f"cannot decode image {path!r}: {e}") from None
  s, params, step = train_state.restore_params(args.workdir, cfg, args.step)
  ctx = data.context(cfg, s.mesh)  # the batch sharding and tokenizer, as the evaluators have them
  n, tokenizer = len(images), ctx.tokenizer
  batch = jax.tree.map(lambda *rows: np.stack(rows), *(images + [images[-1]] * (-n % data.num_shards(ctx.sharding))))
  tokens = decode.jit_generate(s.graphdef, params, jax.device_put(batch, ctx.sharding), jax.random.key(args.seed),
                               max_len=max_len, method=args.method, beam_size=args.beam_size,
                               top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                               length_penalty=args.length_penalty, **captioning.special_ids(tokenizer))
  for path, row in zip(args.images, data.gather(tokens, n)):
    print(f"{path}\t{tokenizer.decode(row)}")
  return 0


def _image_reader(cfg, image_mode: str):
  """Encoded bytes -> one image as the run's model reads it: a normalised [S, S, 3] square, or in a NaFlex
  run (`data.train.max_patches` > 0) the whole image at its aspect ratio within the run's budget, as a dict."""
  from vlmjax.data import naflex, transforms  # noqa: PLC0415
  if not cfg.data.train.max_patches:
    decoder = transforms.ImageDecoder(cfg.model.image_size, image_mode)
    return lambda raw: transforms.normalize(decoder(raw), cfg.data.train.normalize)
  decoder = naflex.Decoder(cfg.model.vision.patch_size, cfg.data.train.max_patches, cfg.data.train.normalize)

  def read(raw):
    one = decoder.empty_images(1)
    decoder.write(*decoder(raw), one, 0)
    return {k: v[0] for k, v in one.items()}
  return read


WORKDIR_HELP = "a training run's directory (or a `vlmjax convert` output directory: its weights as step 0)"
EVAL_OVERRIDES_HELP = """\
Change the run's config.json before evaluating: --config.evals.NAME.FIELD=V changes an
evaluator (e.g. --config.evals.zero_shot.num_examples=256); --config.evals.NAME=TYPE:SOURCE
adds one with its defaults (TYPE: zero_shot | retrieval | captioning; SOURCE: a data spec)."""

EVAL_EPILOG = """\
examples:
  vlmjax eval --workdir runs/demo                  # every evaluator of the run, last checkpoint
  vlmjax eval --workdir runs/demo --step 160
  vlmjax eval --workdir runs/clip --suite datacomp --suite-root /data/evalsets   # the DataComp table
  vlmjax eval --workdir runs/demo --config.evals.zs=zero_shot:synthetic:shapes:validation \\
      --config.evals.zs.num_examples=512
  vlmjax launch local -n 2 -- eval --workdir runs/demo   # two processes, as two hosts"""

CAPTION_EPILOG = """\
examples:
  vlmjax caption --workdir runs/demo image1.png image2.jpg
  vlmjax caption --workdir runs/demo image1.png --method beam --beam-size 4
  vlmjax caption --workdir runs/demo image1.png --method sample --top-p 0.9 --temperature 0.7 --seed 1"""


def add_parsers(sub) -> None:
  p = sub.add_parser("eval", help="run the configured evaluators on a workdir's checkpoint",
                     description="Runs the evaluators of WORKDIR/config.json (cfg.evals) on a checkpoint and "
                     "writes\nWORKDIR/eval/STEP.json; `vlmjax report` reads it with the run's metrics.",
                     epilog=EVAL_EPILOG)
  p.add_argument("--workdir", required=True, metavar="DIR", help=WORKDIR_HELP)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--suite", default=None, metavar="NAME",
                 help="also run a benchmark suite (datacomp | imagenet | vtab | retrieval) on the tasks found "
                 "under --suite-root; prints its table, writes eval/STEP/NAME.md and .json")
  p.add_argument("--suite-root", default=None, metavar="DIR",
                 help="the folder holding the suite's datasets in CLIP_benchmark's webdataset layout "
                 "(wds_imagenet1k/, wds_vtab-cifar100/, ...)")
  distributed.add_flags(p)  # several hosts evaluate together, as they train
  p.takes_overrides(EVAL_OVERRIDES_HELP)
  p.set_defaults(run=_eval)

  p = sub.add_parser("caption", help="print captions for image files, from a workdir's checkpoint",
                     description="Decodes a caption for each image with the checkpoint of a captioning "
                     "model (coca,\ncaptioner) and prints `PATH<TAB>caption`, one line per image.",
                     epilog=CAPTION_EPILOG)
  p.add_argument("--workdir", required=True, metavar="DIR", help=WORKDIR_HELP)
  p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--method", choices=("greedy", "beam", "sample"), default="greedy",
                 help="greedy: the likeliest token each step; beam: beam search; sample: sampling "
                 "(with --top-k, --top-p, --temperature, --seed)")
  p.add_argument("--image-mode", choices=("center_crop", "resize"), default="center_crop",
                 help="center_crop: the centred square, as the evaluators; resize: the whole image, resized")
  p.add_argument("--max-len", type=int, default=None, metavar="N",
                 help="most tokens per caption (default: the model's model.text.context_length)")
  p.add_argument("--beam-size", type=int, default=4, metavar="K", help="beams, with --method beam")
  p.add_argument("--top-k", type=int, default=0, metavar="K",
                 help="with --method sample: sample among the K likeliest tokens only (0: all)")
  p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                 help="with --method sample: sample within the smallest set of tokens of probability >= P "
                 "(1: all)")
  p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                 help="with --method sample: divides the logits (below 1: closer to greedy)")
  p.add_argument("--length-penalty", type=float, default=1.0, metavar="A",
                 help="with --method beam: the best beam maximises log-probability / length**A")
  p.add_argument("--seed", type=int, default=0, help="seed of --method sample")
  p.takes_overrides("Change the run's config.json before decoding; rarely needed: e.g.\n"
                    "--config.data.train.tokenizer=hf:PATH/tokenizer.json, the tokenizer that turns ids into text.")
  p.set_defaults(run=_caption)
