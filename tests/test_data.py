import jax
import numpy as np
import pytest
from PIL import Image

from vlmjax.config import ConfigError
from vlmjax.data import pipeline, sources, synthetic, tokenizers, transforms


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


def test_tar_shards_round_trip(tmp_path):
  synthetic.write_tar_shards(str(tmp_path), num_shards=3, samples_per_shard=5, image_size=24, seed=0)
  src = sources.open_source(f"tar:{tmp_path}/{{00000..00002}}.tar", image_size=24)
  assert len(src) == 15 and src.skipped == {"no_image": 0, "no_caption": 0, "bad_shard": 0}
  ex = src[7]
  want = synthetic.example(7, seed=0, image_size=24)
  assert ex["caption"] == want["caption"] and ex["key"] == "000010002"
  decoded = transforms.decode_image(ex["image"], 24)
  assert np.abs(decoded.astype(int) - want["image"]).mean() < 6  # JPEG at quality 95
  assert len(sources.open_source(f"tar:{tmp_path}/*.tar", image_size=24)) == 15


def test_tar_source_counts_incomplete_samples_and_bad_shards(tmp_path):
  import io
  import tarfile
  synthetic.write_tar_shards(str(tmp_path), num_shards=1, samples_per_shard=2, image_size=16)
  with tarfile.open(tmp_path / "00001.tar", "w") as tar:  # one image without its caption
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG")
    info = tarfile.TarInfo("lonely.png")
    info.size = len(buf.getvalue())
    tar.addfile(info, io.BytesIO(buf.getvalue()))
  (tmp_path / "00002.tar").write_bytes(b"not a tar at all" * 10)
  src = sources.open_source(f"tar:{tmp_path}/*.tar", image_size=16)
  assert len(src) == 2
  assert src.skipped == {"no_image": 0, "no_caption": 1, "bad_shard": 1}


@pytest.mark.parametrize("spec, match", [
    ("tar:/nonexistent/{00000..00003}.tar", "matches no file"),
    ("tar:", "names no path"),
    ("synthetic:cats", "unknown synthetic set"),
    ("webdataset:/x", "unknown data source"),
])
def test_bad_specs_are_one_line_config_errors(spec, match):
  with pytest.raises(ConfigError, match=match):
    sources.open_source(spec, image_size=32)


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
