"""NaFlex batches (vlmjax/data/naflex.py): the grid and patch order of transformers' Siglip2ImageProcessor,
the batcher's {"patches", "shapes", "mask"} image with its padding fraction, the mixed-aspect shapes set,
a short `train.train` of configs/siglip2_naflex_tiny.py (resumed), and one-line errors for bad input."""

import json
import os

import grain
import jax
import numpy as np
import pytest
from conftest import ROOT

from vlmjax import config, train
from vlmjax.data import batcher, naflex, synthetic, tokenizers, transforms
from vlmjax.errors import ConfigError

SPEC = os.path.join(ROOT, "configs/siglip2_naflex_tiny.py:evals=0")
SMALL = (("batch_size", "16"), ("model.vision.depth", "1"), ("model.text.depth", "1"), ("model.vision.width", "64"),
         ("model.text.width", "64"), ("model.vision.mlp_dim", "128"), ("model.text.mlp_dim", "128"),
         ("model.embed_dim", "64"), ("total_steps", "3"), ("log_every", "1"), ("optim.warmup_steps", "1"))

# ((height, width, patch, max_num_patches), (h, w)): `get_image_size_for_max_num_patches` of transformers'
# Siglip2ImageProcessor (5.x), divided by the patch, computed once with torch.
PROCESSOR_GRIDS = [
    ((32, 32, 8, 32), (5, 5)), ((32, 64, 8, 32), (4, 8)), ((64, 32, 8, 32), (8, 4)), ((48, 32, 8, 32), (6, 4)),
    ((32, 48, 8, 32), (4, 6)), ((20, 40, 8, 32), (4, 8)), ((8, 8, 8, 32), (5, 5)), ((8, 200, 8, 32), (1, 25)),
    ((200, 8, 8, 32), (25, 1)), ((224, 224, 16, 256), (16, 16)), ((480, 640, 16, 256), (14, 18)),
    ((640, 480, 16, 256), (18, 14)), ((1080, 1920, 16, 256), (12, 21)), ((300, 1000, 16, 256), (9, 28)),
    ((17, 33, 16, 256), (11, 22)), ((500, 375, 16, 1024), (36, 27)), ((333, 517, 14, 196), (11, 17)),
    ((100, 100, 16, 1), (1, 1)), ((40, 400, 16, 3), (1, 3)), ((1000, 10, 16, 256), (128, 2))]
# convert_image_to_patches(torch.arange(72).reshape(3, 4, 6), 2): a 2x3 grid of 2x2 patches, (row, col, channel).
PROCESSOR_PATCHES = [
    [0, 24, 48, 1, 25, 49, 6, 30, 54, 7, 31, 55], [2, 26, 50, 3, 27, 51, 8, 32, 56, 9, 33, 57],
    [4, 28, 52, 5, 29, 53, 10, 34, 58, 11, 35, 59], [12, 36, 60, 13, 37, 61, 18, 42, 66, 19, 43, 67],
    [14, 38, 62, 15, 39, 63, 20, 44, 68, 21, 45, 69], [16, 40, 64, 17, 41, 65, 22, 46, 70, 23, 47, 71]]


@pytest.mark.parametrize("args, grid", PROCESSOR_GRIDS)
def test_the_grid_is_the_siglip2_processors(args, grid):
  assert naflex.grid_for(*args) == grid


def test_patches_are_in_the_processors_order_and_padded_with_a_mask():
  chw = np.arange(72).reshape(3, 4, 6)
  patches = naflex.patchify(chw.transpose(1, 2, 0), 2)
  np.testing.assert_array_equal(patches, PROCESSOR_PATCHES)
  out, mask = naflex.pad(patches.astype(np.float32), 8)
  assert out.shape == (8, 12) and mask.tolist() == [True] * 6 + [False] * 2 and not out[6:].any()
  np.testing.assert_array_equal(out[:6], patches)


def _batch(records, batch_size, max_patches=32, pack=None, budgets=(), count=1, seed=0):
  """The first `count` batches of `records` (one when count=1) and the iterator's state after them."""
  parent = grain.MapDataset.source(records).to_iter_dataset()
  ds = batcher.DecodeBatch(parent, batch_size=batch_size, decoder=naflex.Decoder(8, max_patches),
                           tokenizer=tokenizers.ByteTokenizer(), context_length=40, seed=seed, num_threads=2,
                           max_skip_fraction=0.5, host_index=0, pack=None if pack is None else {max_patches: pack},
                           budgets=budgets)
  it = iter(ds)
  batches = [next(it) for _ in range(count)]
  state = it.get_state()
  it.close()
  return (batches[0] if count == 1 else batches), state


def test_the_batcher_gives_each_image_its_grid_and_counts_padding_and_small_images():
  wide = [synthetic.ShapesWideSource("train")[i] for i in range(8)]
  png = {**wide[1], "image": transforms.encode_png(wide[1]["image"])}  # bytes decode as the array does
  tiny = {"key": "t", "image": np.zeros((4, 40, 3), np.uint8), "caption": "a tiny image", "_shard": "s"}
  bad = {"key": "b", "image": b"not an image", "caption": "broken", "_shard": "s"}
  batch, state = _batch(wide[:1] + [png] + wide[2:4] + [tiny, bad] + wide[4:], 8)
  kept = wide[:4] + wide[6:8] + wide[4:6]  # rows 4 and 5 skipped, filled by the next two records
  image = batch["image"]
  assert image["patches"].shape == (8, 32, 192) and image["patches"].dtype == np.float32
  assert image["shapes"].dtype == np.int32 and image["mask"].shape == (8, 32) and image["mask"].dtype == bool
  padding = 0
  for row, rec in enumerate(kept):
    h, w = naflex.grid_for(*rec["image"].shape[:2], 8, 32)
    assert tuple(image["shapes"][row]) == (h, w)
    assert image["mask"][row].tolist() == [True] * (h * w) + [False] * (32 - h * w)
    assert image["positions"][row, :h * w].tolist() == [[i // w, i % w] for i in range(h * w)]
    assert not image["positions"][row, h * w:].any()
    resized = transforms._resize(rec["image"], h * 8, w * 8)
    np.testing.assert_allclose(image["patches"][row, :h * w], naflex.patchify(transforms.normalize(resized), 8),
                               atol=1e-5)
    assert not image["patches"][row, h * w:].any()
    padding += 32 - h * w
  assert len({tuple(s) for s in image["shapes"]}) >= 3  # mixed aspect ratios
  stats = batcher.stats_of(state)
  assert stats["data/skipped/too_small"] == 1 and stats["data/skipped/bad_image"] == 1
  assert stats["data/padding_fraction"] == pytest.approx(padding / (8 * 32))
  assert "data/padding_fraction" not in batcher.stats_of({k: v for k, v in state.items()
                                                          if k not in ("tokens", "padding")})


def _images_of(batch: dict) -> list[tuple[np.ndarray, tuple[int, int], bytes]]:
  """(patches, grid, text bytes) of each image of a batch, packed or not, in the batch's order."""
  image, out = batch["image"], []
  if "segments" not in image:
    return [(image["patches"][b, :h * w], (h, w), batch["text"][b].tobytes())
            for b, (h, w) in enumerate(image["shapes"].tolist())]
  for r in range(image["segments"].shape[0]):
    for s in range(1, image["segments"][r].max() + 1):
      b = len(out)
      h, w = image["shapes"][b].tolist()
      tokens = np.flatnonzero(image["segments"][r] == s)
      assert tokens.size == h * w and (np.diff(tokens) == 1).all()  # one run of the image's own tokens
      assert image["positions"][r, tokens].tolist() == [[i // w, i % w] for i in range(h * w)]
      out.append((image["patches"][r, tokens], (h, w), batch["text"][b].tobytes()))
  return out


def test_packing_puts_every_image_with_its_text_into_shared_rows_and_counts_padding():
  """16 images (grids of 24 to 32 tokens) in 4 rows of 128 (the unpacked batch's tokens): each image with
  its own patches, positions and text, fewer rows; in 3 rows some are resized to the room left, counted."""
  wide = [synthetic.ShapesWideSource("train")[i] for i in range(16)]
  plain, _ = _batch(wide, 16)
  packed, state = _batch(wide, 16, pack=(4, 128))
  assert packed["image"]["patches"].shape == (4, 128, 192) and packed["image"]["shapes"].shape == (16, 2)
  want = {text: (patches, grid) for patches, grid, text in _images_of(plain)}
  got = _images_of(packed)
  assert len(got) == 16 and {t for _, _, t in got} == set(want)
  for patches, grid, text in got:
    assert grid == want[text][1]
    np.testing.assert_array_equal(patches, want[text][0])
  stats = batcher.stats_of(state)
  assert stats["data/pack_resized"] == 0
  assert stats["data/padding_fraction"] == pytest.approx(1 - sum(h * w for _, (h, w), _ in got) / (4 * 128))
  tight, state = _batch(wide, 16, pack=(3, 128))
  got = _images_of(tight)
  assert len(got) == 16 and sum(h * w for _, (h, w), _ in got) <= 3 * 128
  assert 0 < batcher.stats_of(state)["data/pack_resized"] < 16
  changed = [g for _, g, t in got if g != want[t][1]]
  assert len(changed) == batcher.stats_of(state)["data/pack_resized"]
  one_each, state = _batch(wide, 16, pack=(2, 8))  # just room: every image on a 1x1 grid
  assert [g for _, g, _ in _images_of(one_each)] == [(1, 1)] * 16 and one_each["image"]["mask"].all()
  with pytest.raises(batcher.DataError, match=r"cannot give each of its 16 images a token in data.train.pack_rows=1 "
                                              r"rows of pack_length=8 tokens; raise pack_rows or pack_length"):
    _batch(wide, 16, pack=(1, 8))


def test_the_wide_set_mixes_aspect_ratios_deterministically():
  source = synthetic.ShapesWideSource("train", image_size=32)
  shapes = {source[i]["image"].shape for i in range(60)}
  assert shapes == {(45, 23, 3), (39, 26, 3), (32, 32, 3), (26, 39, 3), (23, 45, 3)}
  again = synthetic.ShapesWideSource("train", image_size=32)[7]
  assert np.array_equal(again["image"], source[7]["image"]) and again["caption"] == source[7]["caption"]
  assert again["label"] < len(synthetic.CLASS_NAMES)


def test_a_short_naflex_run_trains_logs_padding_resumes_and_evaluates(tmp_path):
  from vlmjax.evals import defaults
  cfg = config.load(SPEC, SMALL)
  cfg.evals.zs = defaults.zero_shot("synthetic:shapes_wide:validation", num_examples=32, batch_size=16,
                                    templates="shapes")
  cfg.evals.ret = defaults.retrieval("synthetic:shapes_wide:validation", num_examples=32, batch_size=16)
  assert not train.train(cfg, str(tmp_path), stop_after=2)["finished"]
  assert train.train(cfg, str(tmp_path))["finished"]
  rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  fractions = [r["data/padding_fraction"] for r in rows]
  assert all(0 < f < 1 for f in fractions)  # shapes_wide: 4x6 and 5x5 grids leave padding, 4x8 none
  result = json.load(open(tmp_path / "eval" / "3.json"))
  assert all(0 <= result[f"eval/{k}"] <= 1 for k in ("zs/top1", "zs/top5", "ret/i2t_r1", "ret/t2i_r5")), result


def test_a_packed_run_resumes_exactly_and_logs_less_padding(tmp_path):
  """Packed batches (16 images in 8 rows of 56 tokens, two per row, at budgets of 24 or 32 patches drawn per
  batch) through `train.train`: finite losses, less padding than unpacked rows, images resized to fit
  counted, and the run resumed from its step-2 checkpoint logs the same step-3 loss as it did running through."""
  import shutil
  packed = SMALL + (("data.train.pack", "true"), ("data.train.pack_rows", "8"), ("data.train.pack_length", "56"),
                    ("data.train.budgets", "24,32"),  # budgets drawn per batch, restored with the data's state
                    ("ckpt_every", "1"), ("ckpt_keep", "3"))
  cfg = config.load(SPEC, packed)
  assert train.train(cfg, str(tmp_path / "through"))["finished"]
  shutil.copytree(tmp_path / "through", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "3")
  assert train.train(cfg, str(tmp_path / "resumed"))["steps"] == (2, 3)
  rows = {d: [r for r in map(json.loads, open(tmp_path / d / "metrics.jsonl")) if "train/loss" in r]
          for d in ("through", "resumed")}
  assert [r["step"] for r in rows["through"]] == [1, 2, 3] and all(np.isfinite(r["train/loss"]) for r in rows["through"])
  assert rows["resumed"][-1]["step"] == 3 and rows["resumed"][-1]["train/loss"] == rows["through"][-1]["train/loss"]
  last = rows["through"][-1]
  assert last["data/padding_fraction"] < 0.1 and last["data/pack_resized"] > 0  # unpacked: 0.14


def test_budgets_are_drawn_per_batch_alike_on_every_host_with_one_compiled_step_each():
  """`data.train.budgets=(16, 32)`: each batch padded to its drawn budget, the draw a function of the seed and
  the batch's number only; the run compiles two steps (one per budget) and refuses a batch of a third
  shape in one line."""
  from vlmjax import compiled, sharding, train_state
  wide = [synthetic.ShapesWideSource("train")[i] for i in range(64)]
  lengths = [b["image"]["patches"].shape[1] for b in _batch(wide, 8, budgets=(16, 32), count=8)[0]]
  assert set(lengths) == {16, 32}
  assert lengths == [b["image"]["patches"].shape[1] for b in _batch(wide[::-1], 8, budgets=(16, 32), count=8)[0]]
  assert lengths != [b["image"]["patches"].shape[1] for b in _batch(wide, 8, budgets=(16, 32), count=8, seed=1)[0]]
  cfg = config.load(SPEC, SMALL + (("data.train.budgets", "16,32"),))
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  steps = train.compile_steps(cfg, s, train.lower_train_step(cfg, s))
  assert isinstance(steps, compiled.PerShape) and len(steps) == 2
  with pytest.raises(ValueError, match=r"no train step was compiled for a batch of shapes .*\(16, 24, 192\)") as e:
    steps(None, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), train.abstract_batch(cfg, s, 24)))
  assert "\n" not in str(e.value)  # the run that trains through both budgets: the packed resume test


def test_siglip2_with_locca_trains_on_packed_naflex_images_and_captions_them(tmp_path, capsys):
  """SigLIP 2's objective (sigmoid loss + the LocCa decoder's three tasks) on packed NaFlex batches: the
  decoder tasks follow their images into the packed order, the run trains, and the captioning evaluator
  decodes NaFlex images (scores in range)."""
  from vlmjax.evals import defaults
  cfg = config.load(os.path.join(ROOT, "configs/siglip2_naflex_tiny.py:evals=0,locca=1,pack=1"),
                    SMALL + (("total_steps", "2"),))
  cfg.evals.cap = defaults.captioning("synthetic:shapes_multi:validation", num_examples=16, batch_size=16, max_len=12,
                                      meteor=False)
  assert cfg.model.name == "siglip2" and cfg.data.train.pack and cfg.data.train.locca.ref > 0
  assert train.train(cfg, str(tmp_path))["finished"]
  rows = [r for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if "train/loss" in r]
  assert all(np.isfinite(r["train/caption_loss"]) and np.isfinite(r["train/contrastive_loss"]) for r in rows), rows
  result = json.load(open(tmp_path / "eval" / "2.json"))
  assert 0 <= result["eval/cap/cider"] and 0 <= result["eval/cap/bleu4"] <= 1, result
  from vlmjax import cli  # `vlmjax caption` reads images at the run's budget, as training does
  wide = synthetic.ShapesWideSource("validation")
  image = next(wide[i]["image"] for i in range(20) if wide[i]["image"].shape[0] != wide[i]["image"].shape[1])
  (tmp_path / "wide.png").write_bytes(transforms.encode_png(image))
  capsys.readouterr()
  assert cli.main(["caption", "--workdir", str(tmp_path), "--max-len", "8", str(tmp_path / "wide.png")]) == 0
  assert capsys.readouterr().out.startswith(f"{tmp_path / 'wide.png'}\t")


def test_naflex_evaluation_reads_each_image_as_training_does():
  """An evaluator's images in a NaFlex run: each record whole at its aspect ratio within the run's budget,
  batched as dicts; the embeddings equal the model's on each image prepared alone."""
  from flax import nnx
  from vlmjax import sharding, train_state
  from vlmjax.evals import data, defaults
  cfg = config.load(SPEC, SMALL)
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  params = train_state.init_state(cfg, s).params
  ev = defaults.zero_shot("synthetic:shapes_wide:validation", num_examples=5, batch_size=8)
  ds = data.EvalSet("zs", ev, data.context(cfg, s.mesh))
  got = data.embed_images(ds, s.graphdef, params)
  decoder = naflex.Decoder(cfg.model.vision.patch_size, cfg.data.train.max_patches)
  encode = jax.jit(lambda p, x: nnx.merge(s.graphdef, p).encode_image(x))
  grids = set()
  for i in range(5):
    one = decoder.empty_images(1)
    image, grid = decoder(ds.source[i]["image"])
    decoder.write(image, grid, one, 0)
    grids.add(grid)
    np.testing.assert_allclose(got[i], np.asarray(encode(params, one))[0], atol=2e-6)
  assert len(grids) > 1  # images of several aspect ratios
  ev.max_patches = 12  # an evaluator's own budget: every image within 12 patches
  images, _ = next(data.EvalSet("zs", ev, data.context(cfg, s.mesh)).image_batches())
  assert images["patches"].shape[1] == 12 and (np.asarray(images["shapes"]).prod(1) <= 12).all()
  from vlmjax.evals import benchmark  # a suite's tasks read at its budget too
  suite = benchmark.config("/nonexistent")
  suite.max_patches = 12
  assert benchmark._task_config("retrieval/flickr30k", "/nonexistent/flickr30k", suite).max_patches == 12
  cfg.evals.zs = ev
  with pytest.raises(ConfigError, match=r"needs evals.zs.max_patches in \[1, model.vision.max_num_patches=32\]"):
    ev.max_patches = 40
    naflex.check_config(cfg, distill=False)
  square = config.load(os.path.join(ROOT, "configs/siglip_tiny.py"))
  with pytest.raises(ConfigError, match=r"evals.zs.max_patches=12 is read by NaFlex runs only") as e:
    ev.max_patches = 12
    data.EvalSet("zs", ev, data.context(square, s.mesh))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    ((("data.train.max_patches", "0"),), r"needs data.train.max_patches in \[1, model.vision.max_num_patches=32\]"),
    ((("data.train.max_patches", "64"),), r"max_num_patches=32\] .*got 64"),
    ((("data.train.pack", "true"), ("data.train.pack_length", "16")), r"pack_length=16 is shorter than one image's"),
    ((("data.train.pack", "true"), ("data.train.pack_rows", "1"), ("data.train.pack_length", "32")),
     r"pack_rows=1 rows of 32 tokens cannot hold batch_size=64 images.*use pack_rows >= 2"),
    ((("data.train.pack_rows", "4"),), r"data.train.pack_rows=4 is read by packed NaFlex batches only"),
    ((("data.train.pack", "true"), ("optim.microbatches", "2")), r"pack=true does not work with optim.microbatches=2"),
    ((("data.train.budgets", "16,64"),), r"data.train.budgets in \[1, model.vision.max_num_patches=32\].*got 64"),
    ((("data.train.pack", "true"), ("data.train.budgets", "16,32"), ("data.train.pack_length", "24"), ("data.train.pack_rows", "32")),
     r"pack_length=24 is shorter than one image's budget \(32 patches\)"),
    ((("data.train.pack", "true"), ("data.train.pack_rows", "15")), r"pack_rows=15 packed rows are not divisible by the 2 devices"),
    ((("data.train.pack", "true"), ("data.train.max_patches", "0"), ("model.vision.kind", "vit")),
     r"pack=true packs NaFlex sequences; set data.train.max_patches > 0"),
])
def test_naflex_configs_that_cannot_work_are_one_line_errors(overrides, message):
  cfg = config.load(SPEC, overrides)
  with pytest.raises(ConfigError, match=message) as e:
    naflex.check_config(cfg, distill=False, devices=2)
  assert "\n" not in str(e.value)


def test_evaluators_a_square_model_and_bad_budgets_are_one_line_errors(tmp_path):
  from vlmjax.evals import defaults
  cfg = config.load(SPEC)
  cfg.evals.ref = defaults.refexp("synthetic:shapes_multi:validation")
  with pytest.raises(ConfigError, match="evaluators of type refexp: only zero_shot, retrieval, fewshot, captioning, suite"):
    train.train(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  with pytest.raises(ConfigError, match="do not work with loss.distill_weight/masked_weight"):
    naflex.check_config(config.load(SPEC), distill=True)
  square = config.load(os.path.join(ROOT, "configs/siglip_tiny.py"), (("data.train.max_patches", "16"),))
  with pytest.raises(ConfigError, match="reads square images"):
    naflex.check_config(square, distill=False)
  with pytest.raises(ConfigError, match=r"data.train.max_patches=-1 must be an int >= 0"):
    config.load(SPEC, (("data.train.max_patches", "-1"),))
  for bad in (lambda: naflex.grid_for(32, 32, 8, 0), lambda: naflex.Decoder(8, 0)):
    with pytest.raises(ConfigError, match="holds no patch"):
      bad()


def test_a_packed_naflex_step_is_the_same_on_one_device_and_a_data_fsdp_tensor_mesh():
  """One update of packed NaFlex batches (rows, segments, positions and shapes split over the batch axes)
  on a 2x2x2 data/FSDP/tensor mesh equals the update on one device (loss, gradient norm, parameters)."""
  from vlmjax import sharding, train_state
  from vlmjax.data import pipeline
  packed = SMALL + (("data.train.pack", "true"), ("data.train.pack_rows", "8"), ("data.train.pack_length", "56"),
                    ("optim.lr", "3e-3"), ("optim.warmup_steps", "0"))
  cfg = config.load(SPEC, packed)
  mesh_cfg = config.load(SPEC, packed + (("mesh.data", "2"), ("mesh.fsdp", "2"), ("mesh.tensor", "2")))
  s1 = train_state.setup(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]))
  host_state = jax.device_get(train_state.init_state(cfg, s1))
  data = pipeline.build(cfg.data.train, global_batch=cfg.batch_size, seed=0, image_size=cfg.model.image_size,
                        context_length=cfg.model.text.context_length, vocab_size=cfg.model.text.vocab_size,
                        sharding=s1.batch_sharding, patch_size=cfg.model.vision.patch_size)
  batch = jax.device_get(next(data))
  data.close()
  assert batch["image"]["segments"].max() > 1  # rows shared by several images
  out = {}
  for name, c in (("one", cfg), ("mesh", mesh_cfg)):
    s = s1 if name == "one" else train_state.setup(c, sharding.make_mesh(c.mesh))
    step = train.compile_train_step(c, s)
    out[name] = step(jax.device_put(host_state, s.state_shardings), jax.device_put(batch, s.batch_sharding))
  (one, m1), (mesh, m) = out["one"], out["mesh"]
  assert len(mesh.params["vision"]["embed"]["kernel"].sharding.device_set) == 8
  np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m["grad_norm"], m1["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), mesh.params, one.params)
