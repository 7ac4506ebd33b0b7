"""`vlmjax convert`: open_clip / Hugging Face checkpoints to vlmjax params, and back (`--reverse`)."""

from __future__ import annotations

import os
import shutil

from vlmjax.errors import ConfigError

TOKENIZER_HELP = ("tokenizer that goes with the checkpoint: hf:TOKENIZER_JSON, open_clip:BPE_GZ (open_clip's "
                  "bpe_simple_vocab_16e6.txt.gz), gemma:TOKENIZER_MODEL (SigLIP 2), sentencepiece:MODEL, or "
                  "none; default: an HF directory's tokenizer.json, else none")
COPIED_AS = {"hf": "tokenizer.json", "open_clip": "tokenizer.json", "gemma": "tokenizer.model",
             "sentencepiece": "spiece.model"}


def _tokenizer(spec: str | None, checkpoint: str, stage: str, out: str) -> tuple[str | None, int]:
  """(the spec the data config should use, naming OUT/tokenizer.json, vocabulary offset); writes
  STAGE/tokenizer.json (STAGE becomes OUT)."""
  from vlmjax.convert import io, tokenizer
  from vlmjax.data import tokenizers
  if spec is None:
    found = io.find_tokenizer_json(checkpoint) if os.path.isdir(checkpoint) else None
    spec = f"hf:{found}" if found else "none"
  if spec == "none":
    return None, 0
  kind, _, path = spec.partition(":")
  if kind not in COPIED_AS or not path:
    raise ConfigError(f"--tokenizer {spec!r} is not valid; {TOKENIZER_HELP}")
  if not os.path.exists(path):
    raise ConfigError(f"--tokenizer {spec!r}: file {path!r} does not exist")
  target = os.path.join(stage, COPIED_AS[kind])
  if kind == "open_clip":
    tokenizer.openclip_tokenizer_json(path, target)
  else:
    shutil.copyfile(path, target)
  shift = tokenizers.build(f"{kind}:{target}").shift
  # open_clip: its text cleaning goes with the file (`tokenizers.OpenClipTokenizer`)
  return f"{kind}:{os.path.join(os.path.abspath(out), COPIED_AS[kind])}", shift


def _load_config(spec: str, overrides):
  """`FILE.py[:ARG]`, or a resolved config.json (a `vlmjax convert` output's, or a run's)."""
  from vlmjax import config
  from vlmjax.convert import export
  return export.load_config(spec, overrides) if spec.endswith(".json") else config.load(spec, overrides)


def _no_map(e: KeyError) -> ConfigError:
  """A layout without a mapping (`mapping.rules`' KeyError) as one line."""
  return ConfigError(str(e.args[0]) if e.args else f"no mapping for {e}")


def _convert(args, overrides) -> int:
  from vlmjax import config
  import vlmjax.convert as convert
  from vlmjax.convert import export, io
  if args.to or args.workdir:
    return _export(args, overrides)
  missing = [flag for flag, value in (("--from", args.source), ("--checkpoint", args.checkpoint),
                                      ("--config", args.config)) if value is None]
  if missing:
    raise ConfigError(f"convert needs {', '.join(missing)} (import, or --reverse), or --to open_clip|hf "
                      "--workdir RUN (export a run)")
  cfg = _load_config(args.config, overrides)
  if args.reverse:
    if args.source == "big_vision":
      raise ConfigError("--reverse writes open_clip or HF names, not a big_vision .npz; use --from hf to write "
                        "SiglipModel's state dict")
    return _reverse(args, cfg)
  check_normalize(args.checkpoint, cfg.data.train.normalize)
  abstract = export.abstract_params(cfg)
  with io.staged_dir(args.out) as stage:  # OUT appears whole or not at all
    spec, offset = _tokenizer(args.tokenizer, args.checkpoint, stage, args.out)
    try:
      params = convert.convert(args.source, args.checkpoint, cfg.model, abstract, vocab_offset=offset)
    except KeyError as e:
      raise _no_map(e) from None
    convert.save_params(stage, params, dict(
        source=args.source, checkpoint=os.path.abspath(args.checkpoint), config=args.config,
        overrides=[f"{k}={v}" for k, v in overrides], tokenizer=spec, vocab_offset=offset))
    if spec is not None:
      cfg.data.train.tokenizer = spec
    config.dump(cfg, os.path.join(stage, "config.json"))  # so `vlmjax eval --workdir OUT` evaluates it
  print(f"wrote {os.path.join(os.path.abspath(args.out), convert.PARAMS_DIR)}")
  print(f"train from it: --config.init_from={os.path.abspath(args.out)}")
  print(f"evaluate it: vlmjax eval --workdir {args.out} --config.evals.NAME=TYPE:SOURCE")
  if spec is not None:
    note = " (ids shifted by one so 0 is padding; the embedding got a pad row)" if offset else ""
    print(f"tokenizer: --config.data.train.tokenizer={spec}{note}")
  return 0


def check_normalize(checkpoint: str, normalize: str) -> None:
  """A one-line ConfigError when the checkpoint's preprocessor_config.json (a Hugging Face directory) normalises
  pixels with another mean and std than `data.train.normalize`, which training and evaluation would use."""
  import json
  import numpy as np
  from vlmjax.data import transforms
  directory = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)  # a file in an HF dir too
  path = os.path.join(directory, "preprocessor_config.json")
  if not os.path.isfile(path):
    return  # an open_clip file or big_vision .npz: nothing recorded
  with open(path) as f:
    pre = json.load(f)
  if not pre.get("do_normalize", True) or "image_mean" not in pre:
    return
  mean, std = np.asarray(pre["image_mean"], np.float64), np.asarray(pre.get("image_std", [1.0] * 3), np.float64)
  match = [name for name in transforms.NORMALIZE
           if np.allclose(transforms.mean_std(name)[0], mean, atol=1e-3)
           and np.allclose(transforms.mean_std(name)[1], std, atol=1e-3)]
  if normalize in match:
    return
  fix = f"set --config.data.train.normalize={match[0]}" if match else \
      f"no data.train.normalize gives it (valid: {', '.join(transforms.NORMALIZE)})"
  raise ConfigError(f"{path} normalises pixels with mean {mean.round(4).tolist()} and std {std.round(4).tolist()}, "
                    f"not data.train.normalize={normalize!r}'s; {fix}")


def _export(args, overrides) -> int:
  from vlmjax.convert import export
  if not (args.to and args.workdir):
    raise ConfigError("--to open_clip|hf and --workdir RUN go together (export a run's step as the reference "
                      "library's model directory)")
  given = [flag for flag, value in (("--from", args.source), ("--checkpoint", args.checkpoint), ("--config",
           args.config), ("--tokenizer", args.tokenizer), ("--vocab-offset", args.vocab_offset)) if value is not None]
  if given or args.reverse or overrides:
    what = given[0] if given else "--reverse" if args.reverse else "--config.* overrides"
    raise ConfigError(f"{what} is not used with --to: the export reads the model config, tokenizer and vocabulary "
                      "offset from the run's config.json")
  print(export.export(args.to, args.workdir, args.step, args.out))
  return 0


def _reverse(args, cfg) -> int:
  import numpy as np
  import vlmjax.convert as convert
  from vlmjax.convert import export, io, params as conv
  if not args.out.endswith(".safetensors"):
    raise ConfigError(f"--reverse writes a .safetensors file; got --out {args.out!r}")
  import jax
  run = _training_run(args.checkpoint)
  if run is None:
    _check_converted(args.checkpoint)
    if args.step is not None:
      raise ConfigError(f"--step {args.step} is for a training run's workdir; {args.checkpoint!r} is a `vlmjax "
                        "convert` output (one step)")
  elif args.step is None and os.path.abspath(args.checkpoint) != run:
    raise ConfigError(f"--checkpoint {args.checkpoint!r} is inside the training run {run!r}: pass the workdir "
                      "itself and --step N (default: its latest step)")
  family = convert.export_family(args.source, cfg.model)  # the family follows from the architecture
  abstract = export.abstract_params(cfg)
  export.mapped(family, cfg, abstract)  # every parameter has a place, before reading
  if run is None:
    ours, what = convert.load_params(args.checkpoint, abstract), args.checkpoint
    offset = _stored_offset(args.checkpoint) if args.vocab_offset is None else args.vocab_offset
  else:
    from vlmjax import train_state
    _, ours, step = train_state.restore_params(run, cfg, args.step)
    ours, what = jax.device_get(ours), f"step {step} of {run}"
    offset = export.run_offset(cfg) if args.vocab_offset is None else args.vocab_offset
  state = conv.to_ref(ours, family, cfg.model, vocab_offset=offset)
  io.write_safetensors({k: np.asarray(v, np.float32) for k, v in state.items()}, args.out)
  print(f"wrote {args.out} ({len(state)} tensors, {family} names) from {what}")
  return 0


REVERSE_READS = ("--reverse reads the output directory of `vlmjax convert` (DIR with params/ and convert.json) "
                 "or a training run's workdir (config.json, checkpoints/)")


def _training_run(path: str) -> str | None:
  """The training workdir (config.json and checkpoints/) that `path` is or lies in, if any."""
  path = os.path.abspath(path)
  for _ in range(4):  # WORKDIR, WORKDIR/checkpoints, .../STEP, .../STEP/state
    if os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json")):
      return path
    path = os.path.dirname(path)
  return None


def _check_converted(path: str) -> None:
  """A one-line ConfigError unless `path` is a `vlmjax convert` output (DIR or DIR/params)."""
  from vlmjax.convert import META, PARAMS_DIR
  if os.path.isdir(os.path.join(path, PARAMS_DIR)) or os.path.isfile(os.path.join(os.path.dirname(
      os.path.abspath(path)), META)):
    return
  if not os.path.exists(path):
    raise ConfigError(f"--checkpoint {path!r} does not exist; {REVERSE_READS}")
  raise ConfigError(f"--checkpoint {path!r} is not a `vlmjax convert` output (it has no {PARAMS_DIR}/); "
                    f"{REVERSE_READS}")


def _stored_offset(path: str) -> int:
  import json
  meta = os.path.join(path, "convert.json")
  if not os.path.exists(meta):
    raise ConfigError(f"{path!r} has no convert.json; pass --vocab-offset 0 or 1 (1 drops a pad row at id 0)")
  with open(meta) as f:
    return int(json.load(f)["vocab_offset"])


CONVERT_EPILOG = """\
examples:
  vlmjax convert --from open_clip --checkpoint ViT-B-16.safetensors --config configs/clip_b16.py \\
      --config.model.text.vocab_size=49409 --tokenizer open_clip:bpe_simple_vocab_16e6.txt.gz \\
      --out weights/clip_b16
  vlmjax convert --from hf --checkpoint ./siglip-base-patch16-224 --config configs/siglip_b16.py \\
      --out weights/siglip_b16
  vlmjax convert --from big_vision --checkpoint webli_en_b16_224_63724782.npz --config configs/siglip_b16.py \\
      --out weights/siglip_bv
  vlmjax train --config configs/clip_b16.py --workdir runs/ft --config.model.text.vocab_size=49409 \\
      --config.init_from=weights/clip_b16 --config.data.train.tokenizer=open_clip:weights/clip_b16/tokenizer.json
  vlmjax eval --workdir weights/clip_b16 --config.evals.zs=zero_shot:tfds:cifar10:test
  vlmjax convert --from open_clip --reverse --checkpoint weights/clip_b16 --config configs/clip_b16.py \\
      --config.model.text.vocab_size=49409 --out back.safetensors
  vlmjax convert --to hf --workdir runs/siglip --out exported/siglip_hf          # SiglipModel.from_pretrained
  vlmjax convert --to open_clip --workdir runs/ft --step 10000 --out exported/ft  # create_model("local-dir:...")"""


def add_parsers(sub) -> None:
  p = sub.add_parser("convert", help="import an open_clip / Hugging Face checkpoint (or export one back)",
                     description="Converts a public checkpoint into vlmjax params (OUT/params, OUT/convert.json, "
                     "OUT/config.json\nand the tokenizer), to train from (--config.init_from=OUT) or evaluate "
                     "(vlmjax eval --workdir OUT);\nwith --reverse, exports such params back to the "
                     "reference's state dict; with --to, writes a run's step\nas a model directory the other "
                     "library loads. A config that does not match the checkpoint\nfails naming the first "
                     "mismatching tensor.", epilog=CONVERT_EPILOG)
  p.add_argument("--to", choices=("open_clip", "hf"), default=None,
                 help="export a run (--workdir) as a directory open_clip (`create_model('local-dir:OUT')`) or "
                 "transformers (`from_pretrained(OUT)`) loads")
  p.add_argument("--workdir", default=None, metavar="RUN",
                 help="with --to: a training run's workdir (--step N, default its latest) or a convert output")
  p.add_argument("--from", dest="source", default=None, choices=("open_clip", "hf", "big_vision"),
                 help="open_clip: a state dict (.safetensors/.pt/.bin); hf: a CLIPModel/SiglipModel/Siglip2Model "
                 "directory; big_vision: a two-towers SigLIP .npz (unrolled or scanned blocks)")
  p.add_argument("--checkpoint", default=None, metavar="PATH",
                 help="the reference checkpoint; with --reverse, a `vlmjax convert` output directory or a "
                 "training run's workdir")
  p.add_argument("--config", default=None, metavar="FILE[:k=v,...]",
                 help="config of the matching architecture: a config file, or a resolved config.json")
  p.add_argument("--out", required=True, metavar="PATH",
                 help="output directory (with --to: new or empty); with --reverse, a .safetensors file")
  p.add_argument("--reverse", action="store_true", help="export vlmjax params to the reference's state dict")
  p.add_argument("--tokenizer", default=None, metavar="SPEC", help=TOKENIZER_HELP)
  p.add_argument("--step", type=int, default=None, metavar="N",
                 help="with --to or --reverse of a training run: the checkpoint step (default: the latest)")
  p.add_argument("--vocab-offset", type=int, choices=(0, 1), default=None,
                 help="with --reverse: pad rows to drop (default: what convert.json recorded)")
  p.takes_overrides("Change the config before converting, e.g. --config.model.text.vocab_size=49409 "
                    "(open_clip's\ntokenizer, shifted by one so 0 is padding).")
  p.set_defaults(run=_convert)
