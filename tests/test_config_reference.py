"""Every key of README's config reference: an invalid value is one line on stderr, exit status 2, and
an untouched workdir, found before anything compiles (`vlmjax train`, in-process).

The keys are read from the README table itself, so a key documented later without an invalid value
here fails `test_every_documented_key_has_an_invalid_value`."""

import importlib.util
import os
import re

import pytest

from conftest import MICRO, ROOT

COCA, TWO_TOWER = "configs/coca_tiny.py:evals=1", "configs/siglip_tiny.py"
TWO_TOWER_ONLY = {"model.init_logit_bias": "nan", "model.image_proj": "mlp", "model.text_proj": "mlp"}
SIGLIP2, SIGLIP2_ONLY = "configs/siglip2_tiny.py", {
    "loss.distill_weight": "-1", "loss.masked_weight": "x", "loss.distill_from": "0", "loss.distill.local_crops": "0",
    "loss.distill.local_size": "72", "loss.distill.local_scale_min": "0", "loss.distill.local_scale_max": "1.5",
    "loss.distill.mask_ratio": "1", "loss.distill.teacher_temp": "0", "loss.distill.student_temp": "-1",
    "model.distill_head.prototypes": "-1", "model.distill_head.hidden": "x", "model.distill_head.bottleneck": "-2"}
INVALID = {
    "seed": "-1", "batch_size": "0", "total_steps": "0", "log_every": "0", "ckpt_every": "0", "ckpt_keep": "0",
    "ckpt_keep_every": "-1", "eval_every": "-1", "nan_policy": "ignore", "nan_max_skips": "0",
    "init_from": "/nonexistent/weights", "init_reinit": "nosuch",
    "model.name": "gpt", "model.image_size": "30", "model.embed_dim": "0", "model.dtype": "float8",
    "model.param_dtype": "int3", "model.attention": "flash", "model.init_logit_scale": "-1",
    "model.max_logit_scale": "-1", "model.act": "swish", "model.norm_eps": "-1", "model.remat": "some",
    "model.scan": "maybe", "model.vision.cls_token": "maybe", "model.vision.depth": "0",
    "model.vision.final_norm": "maybe", "model.vision.heads": "3", "model.vision.kind": "cnn",
    "model.vision.ln_pre": "maybe", "model.vision.mlp_dim": "0", "model.vision.patch_bias": "maybe",
    "model.vision.patch_size": "7", "model.vision.pool": "max", "model.vision.posemb": "rope",
    "model.vision.patch_dropout": "1.0",
    "model.vision.width": "33", "model.text.causal": "maybe", "model.text.cls_mask": "weird",
    "model.text.context_length": "0", "model.text.depth": "0", "model.text.heads": "3", "model.text.kind": "rnn",
    "model.text.mask_pad": "maybe", "model.text.mlp_dim": "0", "model.text.norm_tokens": "maybe",
    "model.text.pad_id": "-1", "model.text.pool": "max", "model.text.vocab_size": "10", "model.text.width": "33",
    "model.pooler.heads": "3", "model.pooler.kind": "x", "model.pooler.mode": "x", "model.pooler.n_queries": "0",
    "model.pooler.width": "33", "model.decoder.depth": "-1", "model.decoder.heads": "3",
    "model.decoder.layout": "x", "model.decoder.mlp_dim": "0", "model.decoder.tie_embedding": "maybe",
    "loss.caption_chunk": "-1", "loss.caption_weight": "-1", "loss.contrastive": "sigmoid",  # CoCa has no bias
    "loss.contrastive_weight": "-1", "loss.label_smoothing": "1.5", "loss.z_loss": "-1",
    "optim.b1": "1.5", "optim.b2": "-0.1", "optim.end_lr_ratio": "-1", "optim.eps": "0", "optim.freeze": "nosuch",
    "optim.grad_clip": "-1", "optim.lr": "nan", "optim.lr_mult": "vision=abc", "optim.warmup_steps": "-1",
    "optim.weight_decay": "-1", "optim.ema_decay": "1.0", "optim.microbatches": "0",
    "mesh.data": "3", "mesh.fsdp": "0", "mesh.tensor": "5", **{f"mesh.rules.{k}": "x" for k in (
        "batch", "embed", "heads", "layers", "mlp", "patch", "vocab")},
    "data.train.crop_min_scale": "1.5", "data.train.data_dir": "/tmp", "data.train.image_mode": "stretch",
    "data.train.max_skip_fraction": "1.5", "data.train.max_patches": "-1", "data.train.pack": "2", "data.train.budgets": "16,0", "data.train.normalize": "lab",
    "data.train.pack_length": "-1", "data.train.pack_rows": "-1", "data.train.num_threads": "0", "data.train.prefetch": "-1",
    "data.train.shuffle_buffer": "-1", "data.train.locca.cap": "-1", "data.train.locca.ref": "x",
    "data.train.locca.gcap": "-0.5", "data.train.locca.box_bins": "1", "data.train.source": "nosuch:x", "data.train.tokenizer": "gpt2",
    "wandb.project": "p", "wandb.mode": "sometimes",
    "xla_options.cpu": "no_such_option=1", "xla_options.gpu": "garbage", "xla_options.tpu": "garbage",
    **TWO_TOWER_ONLY, **SIGLIP2_ONLY,
}
EVALUATOR = {"batch_size": "0", "beam_size": "0", "data.data_dir": "/tmp", "data.source": "nosuch:x", "every": "-1",
             "image_mode": "x", "length_penalty": "-1", "max_len": "0", "meteor": "maybe", "method": "x",
             "num_examples": "-1", "seed": "-1", "temperature": "-1", "top_k": "-1", "top_p": "1.5", "type": "x",
             "ks": "0", "class_names": "/nonexistent.txt", "templates": "nosuch", "merge_same_names": "maybe",
             "params": "weights", "max_patches": "-1"}
FREE = {"wandb.entity", "wandb.name"}  # any text is a valid value


def leaves(cfg, prefix=""):
  for k in cfg.keys():
    if hasattr(cfg[k], "keys"):
      yield from leaves(cfg[k], prefix + k + ".")
    else:
      yield prefix + k


def documented_keys() -> list[str]:
  """The config keys README's reference table names (`a.*` groups expanded against coca_tiny)."""
  from vlmjax import config
  readme = open(os.path.join(ROOT, "README.md")).read()
  table = readme[readme.index("### Config reference"):].split("\n## ")[0]
  known = list(leaves(config.load(os.path.join(ROOT, COCA))))
  out = []
  for row in (line for line in table.splitlines() if line.startswith("| `")):
    for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
      if name.endswith(".*"):
        group = "evals." if "<name>" in name else name[:-1]
        out += [k for k in known if k.startswith(group)]
      elif "/" in name:
        head, _, tails = name.rpartition(".")
        out += [f"{head}.{t}" for t in tails.split("/")]
      else:
        out.append(name)
  return out


KEYS = documented_keys()


def invalid(key: str) -> str | None:
  return EVALUATOR.get(key.split(".", 2)[2]) if key.startswith("evals.") else INVALID.get(key)


def test_every_documented_key_has_an_invalid_value():
  assert len(KEYS) > 100
  assert [k for k in KEYS if k not in FREE and invalid(k) is None] == []


@pytest.mark.parametrize("key", [k for k in KEYS if k not in FREE])
def test_an_invalid_value_is_one_line_before_the_workdir(key, tmp_path, capsys):
  from vlmjax import cli, config
  if key == "wandb.project" and importlib.util.find_spec("wandb") is not None:
    pytest.skip("wandb is installed here")
  spec = TWO_TOWER if key in TWO_TOWER_ONLY else SIGLIP2 if key in SIGLIP2_ONLY else COCA
  known = set(leaves(config.load(os.path.join(ROOT, spec))))
  micro = [f"--config.{k}={v}" for k, v in MICRO if k in known]
  workdir = tmp_path / "run"
  rc = cli.main(["train", "--config", spec, "--workdir", str(workdir), *micro, "--config.total_steps=3",
                 f"--config.{key}={invalid(key)}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("vlmjax: error: "), (rc, err)
  assert not workdir.exists()
