"""SigLIP 2's LocCa decoder (vlmjax/data/locca.py, models/siglip2.py, evals/refexp.py): task sequences with
boxes as text, the batcher's per-example task mix over records with regions, the SigLIP2 family's one pass
serving both objectives, the loss over target tokens only (also in microbatches), prompted decoding,
the refexp evaluator, and one-line errors for configs that cannot work."""

import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from flax import nnx

from vlmjax import config, losses, microbatch, models, sharding, train, train_state
from vlmjax.data import batcher, locca, pipeline, synthetic, tokenizers, transforms
from vlmjax.errors import ConfigError
from vlmjax.evals import decode

SPEC = os.path.join(ROOT, "configs/siglip2_tiny.py")
SMALL = (("batch_size", "16"), ("model.vision.depth", "1"), ("model.text.depth", "1"), ("model.decoder.depth", "1"),
         ("model.vision.width", "64"), ("model.text.width", "64"), ("model.decoder.width", "64"),
         ("model.embed_dim", "64"), ("model.image_size", "48"))


def test_sequences_put_the_prompt_before_the_target_and_train_only_the_target():
  tok = tokenizers.ByteTokenizer()
  assert locca.box_text([0.0, 0.25, 0.5, 1.0], 33) == "0 8 16 32"
  np.testing.assert_allclose(locca.parse_box("x 0 8 16 32 9", 33), [0.0, 0.25, 0.5, 1.0])
  assert locca.parse_box("3 4 2", 33) is None and locca.parse_box("5 5 5 9", 33) is None  # too few; empty
  assert locca.iou([0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]) == pytest.approx(1 / 7)
  region = {"box": [0.1, 0.2, 0.6, 0.9], "text": "small red circle"}
  text, loss = locca.sequence(tok, locca.prompt("ref", region, 32), locca.target("ref", "", region, 32), 40)
  prompt = "ref small red circle:"
  assert text[0] == tok.bos and tok.decode(text[1:1 + len(prompt)]) == prompt
  n = 1 + len(prompt)
  assert tok.decode(text[n:]) == "3 6 19 28" and text[n + 9] == tok.eos  # 9 box characters, then eos
  assert loss[n:n + 10].all() and loss.sum() == 10
  text, loss = locca.sequence(tok, "gcap 1 2 3 4:", "a caption far too long for what is left", 20)
  assert text[-1] == tok.eos and loss.sum() == 20 - 14 and tok.decode(text[1:14]) == "gcap 1 2 3 4:"
  text, loss = locca.sequence(tok, "", "red circle", 16)  # captioning: no prompt, every token trained
  assert np.array_equal(text, tok.encode("red circle", 16)) and loss.sum() == 11 and not loss[0]


def _batches(cfg, records, batch_size=None):
  parent = grain.MapDataset.source(records).to_iter_dataset()
  ds = batcher.DecodeBatch(parent, batch_size=batch_size or len(records), decoder=transforms.ImageDecoder(
      cfg.model.image_size, "resize"), tokenizer=tokenizers.ByteTokenizer(), context_length=64, seed=0, num_threads=2,
      max_skip_fraction=0.5, host_index=0, locca_cfg=cfg.data.train.locca)
  it = iter(ds)
  return list(it), batcher.stats_of(it.get_state())


def test_the_batcher_draws_a_task_per_example_from_its_regions():
  cfg = config.load(SPEC)
  records = [synthetic.ShapesMultiSource("train", image_size=64)[i] for i in range(49)]
  records[5] = {**records[5], "regions": None, "_bad_regions": "record 5: box [0.5, 0.2, 0.1, 0.9] is inverted"}
  records[7] = {k: v for k, v in records[7].items() if k != "regions"}  # no regions: captioned
  batches, stats = _batches(cfg, records, 48)
  batch = batches[0]
  assert stats["data/skipped/bad_region"] == 1  # skipped and counted
  tok, tasks = tokenizers.ByteTokenizer(), []
  texts = [tok.decode(row) for row in batch["decoder_text"]]
  targets = [tok.decode(np.where(m, row, 0)[np.argmax(m):]) for row, m in zip(batch["decoder_text"],
                                                                              batch["decoder_loss"])]
  kept = records[:5] + records[48:] + records[6:48]  # record 5 skipped (bad_region): 48 fills its row
  for rec, text, target in zip(kept, texts, targets):
    boxes = {locca.box_text(r["box"], 32): r["text"] for r in rec.get("regions") or ()}
    if text.startswith("ref "):
      tasks.append("ref")
      assert boxes[target] == text.removeprefix("ref ").split(":")[0]
    elif text.startswith("gcap "):
      tasks.append("gcap")
      assert boxes[text.removeprefix("gcap ").split(":")[0]] == target
    else:
      tasks.append("cap")
      assert text == target == rec["caption"]
  assert tasks[7] == "cap"  # record 7 has no regions: only captioning
  assert min(tasks.count(t) for t in locca.TASKS) >= 8  # a third each, drawn
  again = _batches(cfg, records, 48)[0][0]
  assert np.array_equal(again["decoder_text"], batch["decoder_text"])  # from the record's seed


def _model(cfg):
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  return s, train_state.init_state(cfg, s).params


def _batch(cfg, s, seed=0):
  rng = np.random.default_rng(seed)
  records = [synthetic.ShapesMultiSource("train", image_size=48)[i] for i in range(cfg.batch_size)]
  b = _batches(cfg, records)[0][0]
  b["image"] = rng.standard_normal(b["image"].shape).astype(np.float32)
  return jax.device_put(b, s.batch_sharding)


def test_siglip2_serves_both_objectives_from_one_image_pass_and_the_loss_reads_only_targets():
  cfg = config.load(SPEC, SMALL)
  s, params = _model(cfg)
  batch = jax.device_get(_batch(cfg, s))

  @jax.jit  # one compile: eager NNX dispatches op by op
  def pieces(params, batch):
    model = nnx.merge(s.graphdef, params)
    out = model(batch["image"], batch["text"], decoder_text=batch["decoder_text"])
    logits = model.caption_logits(model.caption_context(batch["image"]), batch["decoder_text"])
    value, _ = losses.caption_term(out, batch, cfg.loss, losses.Context())
    return out, model.encode_image(batch["image"]), model.encode_text(batch["text"]), logits, value
  out, image_emb, text_emb, logits, value = jax.device_get(pieces(params, batch))
  np.testing.assert_allclose(out.image_emb, image_emb, atol=1e-6)
  np.testing.assert_allclose(out.text_emb, text_emb, atol=1e-6)
  np.testing.assert_allclose(out.caption_logits, logits, atol=1e-5)
  logp = jax.nn.log_softmax(np.asarray(out.caption_logits[:, :-1], np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), batch["decoder_text"][:, 1:, None], axis=-1)[..., 0]
  mask = batch["decoder_loss"][:, 1:]
  assert float(value) == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-5)


def test_microbatches_give_the_single_pass_gradient_with_task_sequences():
  cfg = config.load(SPEC, SMALL)
  s, params = _model(cfg)
  batch, axes, rng = _batch(cfg, s, 1), sharding.batch_axes(cfg.mesh.rules), jax.random.key(3)

  def single(p):
    out = nnx.merge(s.graphdef, p)(batch["image"], batch["text"], train=True, rng=rng,
                                   decoder_text=batch["decoder_text"])
    return losses.composite(out, batch, cfg.loss, mesh=s.mesh, batch_axes=axes)
  (want, _), want_g = jax.jit(jax.value_and_grad(single, has_aux=True))(params)
  got, _, got_g = jax.jit(lambda p: microbatch.loss_and_grads(
      p, batch, graphdef=s.graphdef, rng=rng, loss_cfg=cfg.loss, mesh=s.mesh, batch_axes=axes, microbatches=2))(params)
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  top = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_g))
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, atol=2e-5 * top)


def test_prompted_decoding_feeds_the_prompt_then_continues_greedily():
  cfg = config.load(SPEC, SMALL)
  s, params = _model(cfg)
  tok = tokenizers.ByteTokenizer()
  image = np.random.default_rng(0).standard_normal((2, 48, 48, 3)).astype(np.float32)
  prompts = np.stack([locca.prompt_ids(tok, p, 20) for p in ("ref red circle:", "gcap 1 2 3 4:")])
  out = np.asarray(decode.jit_generate(s.graphdef, params, image, prompt_BxL=jnp.asarray(prompts), max_len=24,
                                       eos_id=-1))
  seq = np.concatenate([np.full((2, 1), tok.bos), out], axis=1)  # [bos] prompt continuation
  logits = jax.jit(lambda p, x, t: (lambda m: m.caption_logits(m.caption_context(x), t))(nnx.merge(s.graphdef, p)))(
      params, image, jnp.asarray(seq[:, :24]))
  best = np.asarray(jnp.argmax(logits, -1))
  for b in range(2):
    n = int(np.count_nonzero(prompts[b]))
    assert np.array_equal(out[b, :n - 1], prompts[b, 1:n])
    # causal: each continuation token is the argmax of the logits after the sequence before it
    np.testing.assert_array_equal(seq[b, n:25], best[b, n - 1:24])


def test_a_short_run_trains_and_the_refexp_evaluator_reads_boxes(tmp_path):
  from vlmjax.evals import defaults
  cfg = config.load(SPEC, SMALL + (("total_steps", "3"), ("log_every", "1"), ("optim.warmup_steps", "1")))
  cfg.evals.ref = defaults.refexp("synthetic:shapes_multi:validation", num_examples=16, batch_size=8, max_len=40)
  assert train.train(cfg, str(tmp_path / "run"))["finished"]
  rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert all(np.isfinite(r["train/caption_loss"]) for r in rows if "train/caption_loss" in r)
  result = json.load(open(tmp_path / "run" / "eval" / "3.json"))
  assert 0 <= result["eval/ref/accuracy"] <= 1 and 0 <= result["eval/ref/mean_iou"] <= 1
  assert 0 <= result["eval/ref/parsed"] <= 1 and result["eval/ref/skipped"] == 0


@pytest.mark.parametrize("overrides, message", [
    ((("model.name", "two_tower"),), "has no decoder over image tokens"),
    ((("loss.caption_weight", "0.0"),), "nothing would train the decoder"),
    ((("data.train.locca.box_bins", "1"),), "box_bins=1 must be an int >= 2"),
    ((("data.train.locca.ref", "-1.0"),), "locca.ref=-1.0 must be a number >= 0"),
])
def test_configs_that_cannot_work_are_one_line_errors(overrides, message):
  cfg = config.load(SPEC, overrides)
  with pytest.raises(ConfigError, match=message) as e:
    locca.check_config(cfg, models.takes_decoder_text(cfg.model))
  assert "\n" not in str(e.value)


def test_region_tasks_on_a_source_without_regions_are_one_line_before_training():
  cfg = config.load(SPEC, (("data.train.source", "synthetic:shapes"),))
  with pytest.raises(ConfigError, match="no record of synthetic:shapes has regions") as e:
    pipeline.host_batches(cfg.data.train, batch_size=4, seed=0, image_size=64, context_length=64, vocab_size=259,
                          index=0, count=1)
  assert "\n" not in str(e.value)
