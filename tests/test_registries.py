"""Each kind of part is one module plus one registry line: a toy vision encoder, loss term, data source
and evaluator, all defined here, outside the package, train and evaluate through the registries."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT
from vlmjax import config, losses, models, train, workdir
from vlmjax.data import sources
from vlmjax.evals import common, data, registry
from vlmjax.evals import commands as eval_commands
from vlmjax.models import encoders

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


class ToyVision(nnx.Module):
  """Mean colour of each 8x8 patch, linearly embedded; pooled by the mean over patches."""

  def __init__(self, cfg, image_size, *, dtype, param_dtype, rngs, **_):
    self.patch = cfg.patch_size
    self.embed = nnx.Linear(3, cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, image_BxHxWx3):
    B, H, W, _ = image_BxHxWx3.shape
    p = self.patch
    patches_BxNx3 = image_BxHxWx3.reshape(B, H // p, p, W // p, p, 3).mean(axis=(2, 4)).reshape(B, -1, 3)
    tokens_BxNxD = self.embed(patches_BxNx3)
    return tokens_BxNxD, tokens_BxNxD.mean(axis=1)


class ToySource:
  """`toy:N`: N images of one of four colours, captioned with the colour's index."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    i = int(i)
    if not 0 <= i < self.n:
      raise IndexError(i)
    image = np.broadcast_to(COLOURS[i % 4], (32, 32, 3)).copy()
    return {"key": f"{i:05d}", "image": image, "caption": f"colour {i % 4}", "label": i % 4}


def open_toy(rest, opts):
  return ToySource(int(rest))


def embedding_gap(out, batch, cfg, ctx):
  """A toy loss term: the mean squared distance between paired embeddings."""
  value = jnp.mean(jnp.sum(jnp.square(out.image_emb - out.text_emb), axis=-1))
  return value, {"gap_loss": value}


class ToyEvaluator:
  """`toy`: the mean cosine similarity of paired image and caption embeddings."""

  @staticmethod
  def config(source, *, batch_size=16, every=0, num_examples=0, image_mode="center_crop"):
    c = common.fields("toy", source, batch_size=batch_size, every=every, num_examples=num_examples,
                      image_mode=image_mode)
    c.scale = 1.0
    return c

  @staticmethod
  def check(where, ev):
    if ev.scale <= 0:
      raise config.ConfigError(f"{where}.scale={ev.scale!r} must be > 0")

  class prepare:
    def __init__(self, name, ev, ctx):
      self.ds, self.scale = data.EvalSet(name, ev, ctx), ev.scale
      self.prepared_with = ctx

    def evaluate(self, graphdef, params):
      images = data.embed_images(self.ds, graphdef, params)
      texts = data.embed_texts(self.ds, graphdef, params, self.ds.tokenize([c for caps in self.ds.captions() for c in caps]))
      return {"similarity": self.scale * float(np.mean(np.sum(images * texts, axis=-1)))}


def register_toys(monkeypatch):
  monkeypatch.setitem(encoders.VISION, "toy", ToyVision)
  monkeypatch.setitem(sources.SOURCES, "toy", sources.Kind("toy:N", open_toy))
  monkeypatch.setitem(losses.TERMS, "gap", losses.Term("gap_weight", embedding_gap))
  monkeypatch.setitem(registry.EVALUATORS, "toy", ToyEvaluator)


def toy_config():
  cfg = config.load(os.path.join(ROOT, "configs/siglip_tiny.py:loss=softmax"), (
      ("batch_size", "16"), ("total_steps", "4"), ("log_every", "1"), ("ckpt_every", "4"),
      ("optim.warmup_steps", "1"), ("model.embed_dim", "32"), ("model.text.width", "32"),
      ("model.text.depth", "1"), ("model.text.heads", "2"), ("model.text.mlp_dim", "64"),
      ("data.train.source", "toy:64")))
  cfg.model.vision = ml_collections.ConfigDict(dict(kind="toy", width=32, patch_size=8, pool="gap"))
  cfg.loss.gap_weight = 0.5
  cfg.evals.toy = ToyEvaluator.config("toy:32")
  return cfg


def test_toy_encoder_loss_source_and_evaluator_train_and_evaluate(tmp_path, monkeypatch):
  register_toys(monkeypatch)
  cfg = toy_config()
  assert sources.class_names("toy:4") is None
  assert len(sources.open_source("toy:8", mode="random")) == 8
  halves = []
  for host in (0, 1):
    stream = iter(sources.open_source("toy:8", mode="stream", seed=0, host_index=host, host_count=2))
    halves.append({next(stream)["key"] for _ in range(4)})
  assert halves[0].isdisjoint(halves[1]) and len(halves[0] | halves[1]) == 8  # each host its share of an epoch
  run = str(tmp_path / "run")
  summary = train.train(cfg, run)
  assert summary["finished"]
  rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/gap_loss"]) and r["train/gap_loss"] > 0 for r in train_rows)
  evals_row = next(r for r in rows if "eval/toy/similarity" in r)
  assert -1 <= evals_row["eval/toy/similarity"] <= 1
  # The model has the toy tower's parameters, under the usual path.
  params = jax.eval_shape(lambda: nnx.state(models.build(cfg.model, nnx.Rngs(0))))
  assert "embed" in params["vision"]
  # `vlmjax eval` on the workdir: the toy evaluator again, from config.json, on the checkpoint.
  step, metrics, path, _ = eval_commands.evaluate_workdir(run, [("evals.toy.scale", "2.0")])
  assert step == 4 and os.path.isfile(path)
  assert abs(metrics["eval/toy/similarity"] - 2 * evals_row["eval/toy/similarity"]) < 1e-5  # scale overridden
  # One home: the training run's evaluation and `vlmjax eval`'s both in metrics.jsonl and eval/4.json (the
  # later one replacing the earlier's keys there), and in TensorBoard.
  rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
  assert [r["eval/toy/similarity"] for r in rows if "eval/toy/similarity" in r] == [
      evals_row["eval/toy/similarity"], metrics["eval/toy/similarity"]]
  assert json.load(open(path))["eval/toy/similarity"] == metrics["eval/toy/similarity"]
  assert [v for s, v in tb_scalars(os.path.join(run, "tb"), "eval/toy/similarity")] == pytest.approx(
      [evals_row["eval/toy/similarity"], metrics["eval/toy/similarity"]])


def tb_scalars(folder: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of `tag` in every TensorBoard event file of `folder` (TFRecord framing, Event protos)."""
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for name in sorted(os.listdir(folder)):
    data = open(os.path.join(folder, name), "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      out += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return out


def test_unknown_parts_are_one_line_errors_naming_the_valid_ones(monkeypatch):
  import pytest
  cfg = toy_config()
  with pytest.raises(config.ConfigError, match=r"model.vision.kind='toy' is unknown; valid: vit"):
    models.abstract(cfg.model)
  with pytest.raises(sources.DataError, match=r"unknown data source 'toy:3'; valid kinds: synthetic:shapes"):
    sources.open_source("toy:3")
  with pytest.raises(config.ConfigError, match=r"evals.toy.type='toy' is unknown; valid: zero_shot"):
    registry.validate("toy", cfg.evals.toy)
  register_toys(monkeypatch)
  cfg.evals.toy.scale = 0.0
  with pytest.raises(config.ConfigError, match=r"evals.toy.scale=0.0 must be > 0"):
    registry.validate("toy", cfg.evals.toy)


def test_a_workdir_written_before_tower_kinds_existed_still_builds(tmp_path):
  for spec in ("configs/coca_tiny.py:evals=0", "configs/cappa_tiny.py"):
    cfg = config.load(os.path.join(ROOT, spec))
    stored = json.loads(cfg.to_json_best_effort())
    del stored["model"]["vision"]["kind"]
    stored["model"]["text"].pop("kind", None)
    (tmp_path / "config.json").write_text(json.dumps(stored))
    old = workdir.read_config(str(tmp_path))
    assert old.model.vision.kind == "vit"
    assert ("kind" in old.model.text) == ("width" in old.model.text)  # a captioner has no text tower
    models.abstract(old.model)


def test_every_part_kind_has_its_registry():
  tables = (models.REGISTRY, encoders.VISION, encoders.TEXT, losses.CONTRASTIVE, losses.TERMS, sources.SOURCES,
            registry.EVALUATORS)
  assert all(isinstance(t, dict) and hasattr(t, "register") for t in tables)
  assert isinstance(registry.EVALUATORS["zero_shot"], types.ModuleType)
