"""The shapes set as a TFDS builder (`tfds:vlmjax_shapes[/CONFIG][:SPLIT]`), prepared without TensorFlow.

TFDS encodes images with TensorFlow, so the builder hands it ready-made JPEG
bytes instead; everything else (ArrayRecord shards, dataset_info.json) is TFDS's
own writer, and `tfds.data_source` reads the result.
"""

from __future__ import annotations

import io

import tensorflow_datasets as tfds
from PIL import Image

from vlmjax.data import synthetic


class VlmjaxShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes with captions describing them; deterministic from the split's seed."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="default", description="10k/1k/1k examples at 64 px"),
      tfds.core.BuilderConfig(name="tiny", description="64/16/16 examples at 32 px (tests)"),
  ]
  SIZES = {"default": (64, {"train": 10_000, "validation": 1_000, "test": 1_000}),
           "tiny": (32, {"train": 64, "validation": 16, "test": 16})}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "caption": tfds.features.Text(), "key": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=[n.replace(" ", "_") for n in synthetic.CLASS_NAMES])}))

  def _split_generators(self, dl_manager):
    size, counts = self.SIZES[self.builder_config.name]
    return {split: self._generate_examples(split, n, size) for split, n in counts.items()}

  def _generate_examples(self, split: str, n: int, size: int):
    for i in range(n):
      ex = synthetic.example(i, seed=synthetic.SEED_OF_SPLIT[split], image_size=size)
      buf = io.BytesIO()
      Image.fromarray(ex["image"]).save(buf, format="JPEG", quality=95)
      yield ex["key"], {"image": io.BytesIO(buf.getvalue()), "caption": ex["caption"],
                        "key": ex["key"], "label": ex["label"]}


def prepare(data_dir: str, config: str = "default") -> str:
  """Prepares the set as ArrayRecord under data_dir; returns the dataset directory."""
  builder = VlmjaxShapes(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)
