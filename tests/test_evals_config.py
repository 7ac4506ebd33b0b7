"""Evaluator configs, class names and eval data (no model compiled)."""

import jax
import ml_collections
import numpy as np
import pytest

from conftest import MICRO, ROOT
from vlmjax import config, errors, models, sharding
from vlmjax.data import sources, synthetic
from vlmjax.evals import commands, common, data, defaults, registry, zero_shot


def test_validate_rejects_malformed_evaluators_in_one_line():
  ev = defaults.captioning("synthetic:shapes:validation")
  registry.validate("cap", ev)
  cases = [
      (ml_collections.ConfigDict(dict(type="detection")), "evals.bad.type='detection' is unknown"),
      (defaults.retrieval("synthetic:shapes", batch_size=0), "evals.bad.batch_size must be a positive int"),
      (defaults.zero_shot("synthetic:shapes", every=-1), "evals.bad.every must be an int >= 0"),
      (defaults.captioning("synthetic:shapes", method="nucleus"), "evals.bad.method='nucleus' is unknown"),
      (defaults.captioning("synthetic:shapes", top_p=0.0), "evals.bad.top_p=0.0 is out of range; it must be in (0, 1]"),
      (defaults.zero_shot("synthetic:shapes", image_mode="random_resized_crop"),
       "evals.bad.image_mode='random_resized_crop' is unknown; valid: center_crop, resize"),
  ]
  extra = defaults.retrieval("synthetic:shapes")
  extra.topk = 3
  cases.append((extra, "unknown ['topk']"))
  for ev, message in cases:
    with pytest.raises(config.ConfigError, match=None) as e:
      registry.validate("bad", ev)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_due_every_and_final():
  evals = ml_collections.ConfigDict(dict(a=defaults.zero_shot("s", every=10), b=defaults.retrieval("s", every=0)))
  assert common.due(evals, 20) == ["a"] and common.due(evals, 15) == []
  assert common.due(evals, 15, final=True) == ["a", "b"]
  assert common.due(evals, 15, every=5) == ["a", "b"] and common.due(evals, 20, every=15) == ["a"]


def test_new_evaluator_from_an_override():
  ev = registry.new_evaluator("x", "retrieval:synthetic:shapes:test")
  assert ev.type == "retrieval" and ev.data.source == "synthetic:shapes:test" and tuple(ev.ks) == (1, 5, 10)
  with pytest.raises(config.ConfigError, match="TYPE:SOURCE"):
    registry.new_evaluator("x", "segmentation:synthetic:shapes")


def test_old_workdir_configs_keep_their_behaviour_and_images_are_center_cropped(tmp_path):
  import json
  cfg = config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO)
  cfg.evals.zs = defaults.zero_shot("synthetic:shapes:test", batch_size=8, num_examples=8)
  old = json.loads(cfg.to_json_best_effort())
  # written before these fields existed: evaluators then resized whole images, text padded with 0
  del old["evals"]["zs"]["image_mode"], old["model"]["text"]["pad_id"], old["xla_options"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = commands.load_config(str(tmp_path), [])
  assert loaded.evals.zs.image_mode == "resize" and loaded.model.text.pad_id == 0
  assert loaded.xla_options.cpu == "" and defaults.zero_shot("x").image_mode == "center_crop"
  models.abstract(loaded.model)  # the old model config builds
  loaded.evals.zs.image_mode = "center_crop"
  # A wide image: the evaluator keeps its centred square (the middle third here), resize keeps all.
  wide = np.zeros((16, 48, 3), np.uint8)
  wide[:, 16:32] = 255
  ds = data.EvalSet("zs", loaded.evals.zs, data.context(loaded, sharding.make_mesh(loaded.mesh)))
  S = loaded.model.image_size
  assert ds.decoder(wide).shape == (S, S, 3) and ds.decoder(wide).min() == 255
  loaded.evals.zs.image_mode = "resize"
  resized = data.EvalSet("zs", loaded.evals.zs, data.context(loaded, sharding.make_mesh(loaded.mesh))).decoder(wide)
  assert resized[:, 0].max() == 0 and resized[:, S // 2].min() == 255


def test_templates_and_class_names(tmp_path, monkeypatch):
  assert zero_shot.templates("shapes", "w") == zero_shot.TEMPLATES["shapes"]
  assert zero_shot.templates(("a {}", "the {}"), "w") == ("a {}", "the {}")
  with pytest.raises(config.ConfigError, match="exactly one"):
    zero_shot.templates(("no placeholder",), "evals.z.templates")
  with pytest.raises(config.ConfigError, match="not a template set"):
    zero_shot.templates("imagenet80", "evals.z.templates")
  assert zero_shot.class_names("synthetic:shapes:test", "", "", "w") == synthetic.CLASS_NAMES
  names = tmp_path / "names.txt"
  names.write_text("goldfish\ngreat white shark\n\n")
  assert zero_shot.class_names("tfds:imagenet2012:validation", "", str(names), "w") == ("goldfish", "great white shark")
  monkeypatch.setattr(sources, "_tfds_label_names", lambda name, data_dir: ["n01440764", "n01443537"])
  with pytest.raises(config.ConfigError, match="WordNet id"):
    zero_shot.class_names("tfds:imagenet2012:validation", "", "", "evals.in1k.class_names")
  monkeypatch.setattr(sources, "_tfds_label_names", lambda name, data_dir: ["aquarium_fish", "apple"])
  assert zero_shot.class_names("tfds:cifar100:test", "", "", "w") == ("aquarium fish", "apple")


def test_tfds_eval_set_has_the_shapes_labels_and_class_names(tmp_path):
  cfg = config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO)
  ev = defaults.zero_shot("tfds:vlmjax_shapes/tiny:validation", batch_size=8, num_examples=16)
  ev.data.data_dir = str(tmp_path)
  ds = data.EvalSet("tfds", ev, data.context(cfg, sharding.make_mesh(cfg.mesh)))
  seed = synthetic.SEED_OF_SPLIT["validation"]  # TFDS shuffles on writing: find each example by its key
  want = [synthetic.example(int(m["key"][2:]), seed=seed)["label"] for m in ds.meta()]
  assert len(set(want)) > 1
  np.testing.assert_array_equal(ds.labels(), want)
  assert zero_shot.class_names(ev.data.source, ev.data.data_dir, "", "w") == synthetic.CLASS_NAMES
  images = [(jax.device_get(x), n) for x, n in ds.image_batches()]
  assert [x.shape for x, _ in images] == [(8, 32, 32, 3)] * 2 and [n for _, n in images] == [8, 8]


def test_eval_set_pads_the_last_batch_and_checks_sizes():
  cfg = config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO)
  mesh = sharding.make_mesh(cfg.mesh)
  ds = data.EvalSet("r", defaults.retrieval("synthetic:shapes:test", batch_size=16, num_examples=20), data.context(cfg, mesh))
  batches = list(ds.text_batches(ds.tokenize([c for caps in ds.captions() for c in caps])))
  assert [n for _, n in batches] == [16, 4] and batches[1][0].shape == (16, cfg.model.text.context_length)
  assert len(batches[1][0].sharding.device_set) == 8
  with pytest.raises(config.ConfigError, match="not divisible by the 8 batch shards"):
    data.EvalSet("r", defaults.retrieval("synthetic:shapes:test", batch_size=12), data.context(cfg, mesh))
  with pytest.raises(config.ConfigError, match="exceeds the 100000 examples"):
    data.EvalSet("r", defaults.retrieval("synthetic:shapes:test", num_examples=10**6), data.context(cfg, mesh))


def _empty_file(tmp_path):
  (tmp_path / "names.txt").write_text("\n\n")
  return str(tmp_path / "names.txt")


@pytest.mark.parametrize("spec, make, message", [
    ("coca", lambda _: defaults.zero_shot("synthetic:shapes:test", templates="photos"),
     "evals.e.templates='photos' is not a template set"),
    ("coca", lambda _: defaults.zero_shot("synthetic:shapes:test", class_names="/nonexistent/names.txt"),
     "evals.e.class_names='/nonexistent/names.txt' is neither a file"),
    ("coca", lambda tmp: defaults.zero_shot("synthetic:shapes:test", class_names=_empty_file(tmp)),
     "holds no class name"),
    ("coca", lambda _: defaults.zero_shot("synthetic:shapes:valdation"), "synthetic:shapes:valdation"),
    ("coca", lambda _: defaults.retrieval("synthetic:shapes:test", num_examples=10**6), "exceeds the 100000"),
    ("coca", lambda _: defaults.retrieval("synthetic:shapes:test", batch_size=12), "not divisible by the 8"),
    ("coca", lambda _: defaults.retrieval("synthetic:shapes:test", ks=(0, 5)), "evals.e.ks=(0, 5) must be"),
    ("coca", lambda _: defaults.captioning("synthetic:shapes:test", max_len=41),
     "evals.e.max_len=41 exceeds model.text.context_length=40"),
    ("siglip", lambda _: defaults.captioning("synthetic:shapes:test"), "needs a model with caption_logits()"),
])
def test_validate_all_finds_what_would_fail_after_training(spec, make, message, tmp_path):
  """Everything an evaluator needs but a trained model is checked before training starts: with
  `every=0` a failure would come after the whole run, and the finished run would never evaluate."""
  from vlmjax import evals
  cfg = (config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO) if spec == "coca"
         else config.load(f"{ROOT}/configs/siglip_tiny.py"))
  cfg.evals.e = make(tmp_path)
  with pytest.raises(errors.UserError) as e:  # a config or data error, one line
    evals.prepare_all(cfg)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_train_rejects_a_bad_evaluator_before_it_trains(tmp_path):
  from vlmjax import train
  cfg = config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO)
  cfg.evals.zs = defaults.zero_shot("synthetic:shapes:test", image_mode="center-crop")
  with pytest.raises(config.ConfigError, match="evals.zs.image_mode='center-crop' is unknown"):
    train.train(cfg, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("flag, message", [
    (("--top-p", "0"), "--top-p=0.0 is out of range; it must be in (0, 1]"),
    (("--temperature", "0"), "--temperature=0.0 is out of range; it must be > 0"),
    (("--top-k", "100000"), "--top-k=100000 is out of range; it must be >= 0 and <= the vocabulary"),
    (("--max-len", "0"), "--max-len=0 is out of range; it must be > 0"),
])
def test_caption_command_rejects_bad_decoding_flags_in_one_line(tmp_path, capsys, flag, message):
  from vlmjax import cli
  config.dump(config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO), str(tmp_path / "config.json"))
  assert cli.main(["caption", "--workdir", str(tmp_path), "img.png", *flag]) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_corrupt_config_json_is_one_line_for_eval_and_rewritten_by_train(tmp_path, capsys):
  from vlmjax import workdir
  (tmp_path / "config.json").write_text('{"seed": 0, "model": {')  # cut short
  with pytest.raises(config.ConfigError, match=r"cannot read .*config.json: JSONDecodeError: .*again rewrites it"):
    commands.load_config(str(tmp_path), ())
  workdir.check_resume(config.load(f"{ROOT}/configs/coca_tiny.py:evals=0", MICRO), str(tmp_path))
  assert "resuming without comparing settings" in capsys.readouterr().out


def test_caption_needs_a_captioning_model_and_tfds_sets_must_be_prepared(tmp_path, capsys):
  from vlmjax import cli
  from vlmjax.data import records, sources
  config.dump(config.load(f"{ROOT}/configs/siglip_tiny.py"), str(tmp_path / "config.json"))
  assert cli.main(["caption", "--workdir", str(tmp_path), "img.png"]) == 2
  err = capsys.readouterr().err
  assert "needs a captioning model (model.name coca or captioner)" in err and len(err.strip().splitlines()) == 1
  with pytest.raises(sources.DataError, match=r"'cifar10' is not prepared .*tfds build cifar10 --file_format=array_record"):
    records.TfdsSource("cifar10", "test", data_dir=str(tmp_path / "tfds"))
