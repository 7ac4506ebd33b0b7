import jax
import numpy as np
import pytest
from PIL import Image

from vlmjax.config import ConfigError
from vlmjax.data import pipeline, synthetic, tokenizers, transforms


def test_shapes_are_deterministic_and_captioned():
  a, b = synthetic.example(5, seed=0), synthetic.example(5, seed=0)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["caption"] == b["caption"] and a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
  assert not np.array_equal(a["image"], synthetic.example(5, seed=1)["image"])
  color, shape = synthetic.CLASS_NAMES[a["label"]].split()
  assert color in a["caption"] and shape in a["caption"]
  # The shape's colour is really drawn: the brightest pixels carry it.
  assert (np.abs(a["image"].astype(int) - synthetic.COLORS[color]).sum(-1) < 10).sum() > 10


def test_byte_tokenizer_round_trip_pad_and_truncate():
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode("a red circle", 20)
  assert ids.dtype == np.int32 and ids.shape == (20,)
  assert ids[0] == tokenizers.BOS and (ids[14:] == 0).all() and ids[13] == tokenizers.EOS
  assert tok.decode(ids) == "a red circle"
  short = tok.encode("x" * 50, 8)
  assert short[-1] == tokenizers.EOS and tok.decode(short) == "x" * 6
  assert tok.decode(tok.encode("café", 10)) == "café"


def test_pipeline_batches_are_global_and_resume_exactly(micro_cfg):
  cfg = micro_cfg()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  build = lambda: pipeline.build(cfg.data.train, global_batch=16, seed=3, image_size=32,
                                 context_length=40, vocab_size=259, sharding=sh)
  it = build()
  first = [next(it) for _ in range(3)]
  assert first[0]["image"].shape == (16, 32, 32, 3) and first[0]["text"].shape == (16, 40)
  assert first[0]["image"].sharding == sh and first[0]["text"].dtype == np.int32
  state = it.get_state()
  rest = [jax.device_get(next(it)) for _ in range(2)]
  resumed = build()
  resumed.set_state(state)
  for want in rest:
    got = jax.device_get(next(resumed))
    np.testing.assert_array_equal(got["text"], want["text"])
    np.testing.assert_array_equal(got["image"], want["image"])
  # A different seed gives a different order.
  other = pipeline.build(cfg.data.train, global_batch=16, seed=4, image_size=32, context_length=40, vocab_size=259, sharding=sh)
  assert not np.array_equal(jax.device_get(next(other))["text"], jax.device_get(first[0])["text"])


def test_tokenizer_larger_than_model_vocabulary_is_a_config_error(micro_cfg):
  cfg = micro_cfg()
  sh = jax.sharding.NamedSharding(jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)),
                                  jax.sharding.PartitionSpec("data"))
  with pytest.raises(ConfigError, match="has 259 ids but model.text.vocab_size is 100"):
    pipeline.build(cfg.data.train, global_batch=16, seed=0, image_size=32, context_length=40,
                   vocab_size=100, sharding=sh)


def _train_tokenizers(tmp_path):
  import sentencepiece as spm
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  texts = [synthetic.example(i)["caption"] for i in range(300)]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "sp"), vocab_size=31,
                                 model_type="word", minloglevel=2)
  hf = Tokenizer(models.WordLevel(unk_token="<unk>"))
  hf.pre_tokenizer = pre_tokenizers.Whitespace()
  hf.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
  hf.save(str(tmp_path / "tokenizer.json"))
  return f"sentencepiece:{tmp_path}/sp.model", f"hf:{tmp_path}/tokenizer.json"


def test_sentencepiece_and_hf_tokenizers_pad_with_zero_and_round_trip(tmp_path):
  sp_spec, hf_spec = _train_tokenizers(tmp_path)
  for spec, shift in ((sp_spec, 1), (hf_spec, 0)):  # sentencepiece's id 0 is <unk>: shifted up by one
    tok = tokenizers.build(spec)
    assert tok.shift == shift
    ids = tok.encode("a small red circle, center", 16)
    assert ids.dtype == np.int32 and ids.shape == (16,) and ids[-1] == 0 and (ids[:7] > 0).all()
    assert ids.max() < tok.vocab_size and tok.eos in ids.tolist()
    assert tok.decode(ids).replace(" ,", ",") == "a small red circle, center"
    short = tok.encode("a small red circle, center", 4)
    assert short[-1] == tok.eos and (short > 0).all()
  for spec, match in (("sentencepiece:/nope.model", "does not exist"), ("gpt2", "unknown"), ("bytes:x", "unknown")):
    with pytest.raises(ConfigError, match=match):
      tokenizers.build(spec)


def test_decoder_crops_at_reduced_size_and_rejects_bad_bytes():
  import io
  y, x = np.mgrid[:512, :640]
  image = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=95)
  data = buf.getvalue()
  full = transforms.ImageDecoder(64)(data)
  assert full.shape == (64, 64, 3)
  ref = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR)).astype(int)
  assert np.abs(full.astype(int) - ref).mean() < 12  # reduced decode + area resize ~ full resize
  rrc = transforms.ImageDecoder(64, "random_resized_crop", 0.2)
  a, b = (rrc(data, np.random.default_rng(s)) for s in (1, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, rrc(data, np.random.default_rng(2)))
  assert transforms.ImageDecoder(32, "center_crop")(image).shape == (32, 32, 3)
  png = io.BytesIO()
  Image.fromarray(image[:40, :50]).convert("L").save(png, format="PNG")
  assert transforms.ImageDecoder(32)(png.getvalue()).shape == (32, 32, 3)
  for bad in (b"not an image", data[: len(data) // 2], b"\xff\xd8\xff" + b"\x00" * 100):
    with pytest.raises(transforms.BadImage):
      transforms.ImageDecoder(32)(bad)


def _with_orientation(array, orientation, fmt="JPEG"):
  import io
  im = Image.fromarray(array)
  exif = im.getexif()
  exif[0x0112] = orientation
  buf = io.BytesIO()
  im.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


def _as_displayed(data):
  import io
  from PIL import ImageOps
  return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def test_exif_orientation_is_applied_before_the_crop(monkeypatch):
  # 200 x 100 stored, orientation 6: shown as 100 x 200 (portrait); left half red, right half blue, green ramp.
  a = np.zeros((100, 200, 3), np.uint8)
  a[:, :100, 0], a[:, 100:, 2], a[..., 1] = 255, 255, np.arange(100, dtype=np.uint8)[:, None] * 2
  data = _with_orientation(a, 6)
  for fallback in (False, True):  # OpenCV's decode, and PIL's for formats OpenCV does not read
    if fallback:
      monkeypatch.setattr(transforms.cv2, "imdecode", lambda *args: None)
    for mode in ("resize", "center_crop"):
      shown = _as_displayed(data)
      if mode == "center_crop":
        w, h = shown.size
        s = min(w, h)
        shown = shown.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
      ref = np.asarray(shown.resize((32, 32), Image.BILINEAR)).astype(int)
      got = transforms.ImageDecoder(32, mode)(data).astype(int)
      assert np.abs(got - ref).mean() < 4, (fallback, mode, np.abs(got - ref).mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(orientation):
  a = (np.random.default_rng(orientation).random((6, 10, 3)) * 255).astype(np.uint8)
  data = _with_orientation(a, orientation, fmt="PNG")  # lossless: exact comparison
  region, bgr = transforms._decode_bytes(data, lambda w, h: (0, 0, w, h, max(w, h)))
  got = region[..., ::-1] if bgr else region
  np.testing.assert_array_equal(got, np.asarray(_as_displayed(data)))


def test_jpeg_with_bytes_after_its_end_marker_decodes():
  import io
  a = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="JPEG")
  data = buf.getvalue()
  want = transforms.ImageDecoder(32)(data)
  for extra in (b"\0" * 64, b"SEFT" + b"x" * 200):
    np.testing.assert_array_equal(transforms.ImageDecoder(32)(data + extra), want)
  # An EXIF thumbnail carries its own end marker: a cut main image is still truncated.
  thumb = io.BytesIO()
  Image.fromarray(a[:8, :8]).save(thumb, format="JPEG")
  exif = Image.Exif()
  exif[0x0112] = 1
  with_thumb = io.BytesIO()
  Image.fromarray(a).save(with_thumb, format="JPEG", exif=exif.tobytes() + thumb.getvalue())
  cut = with_thumb.getvalue()
  assert b"\xff\xd9" in cut[:len(cut) // 2]
  with pytest.raises(transforms.BadImage, match="truncated"):
    transforms.ImageDecoder(32)(cut[:len(cut) // 2])


def test_normalisations_map_pixels_as_their_libraries_and_batches_and_evaluators_follow_the_run(micro_cfg):
  """`data.train.normalize`: siglip maps 0..255 to [-1, 1] (big_vision's value_range(-1, 1)), clip and
  imagenet subtract their means and divide by their stds; the table look-up equals the arithmetic; training
  batches and an evaluator's images of a siglip run are the clip run's pixels renormalised."""
  from vlmjax import config, sharding
  from vlmjax.evals import data, defaults
  assert tuple(transforms.NORMALIZE) == config.NORMALIZATIONS
  pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
  np.testing.assert_allclose(transforms.normalize(pixels, "siglip"), pixels / 127.5 - 1, atol=1e-6)
  np.testing.assert_allclose(transforms.normalize(pixels, "imagenet")[..., 0], (pixels[..., 0] / 255 - 0.485) / 0.229,
                             atol=1e-5)
  for how in transforms.NORMALIZE:
    out = np.empty(pixels.shape, np.float32)
    transforms.normalize_into(pixels, out, how)
    np.testing.assert_allclose(out, transforms.normalize(pixels, how), atol=1e-6)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  images = {}
  for how in ("clip", "siglip"):
    cfg = micro_cfg(("data.train.normalize", how))
    it = pipeline.build(cfg.data.train, global_batch=16, seed=3, image_size=32, context_length=40, vocab_size=259,
                        sharding=sh)
    images[how] = np.asarray(jax.device_get(next(it))["image"])
    it.close()
    ds = data.EvalSet("zs", defaults.zero_shot("synthetic:shapes:validation", num_examples=8, batch_size=8),
                      data.context(cfg, sharding.make_mesh(cfg.mesh)))
    images[how + "_eval"] = np.asarray(jax.device_get(next(ds.image_batches())[0]))
  for key in ("", "_eval"):
    raw = images["clip" + key] * transforms.STD + transforms.MEAN
    np.testing.assert_allclose(images["siglip" + key], raw / 127.5 - 1, atol=1e-4)
  with pytest.raises(ConfigError, match=r"data.train.normalize='lab' must be one of clip, siglip, imagenet"):
    micro_cfg(("data.train.normalize", "lab"))
