"""The shapes set as a TFDS builder (`tfds:vlmjax_shapes[/CONFIG][:SPLIT]`), prepared without TensorFlow.

Configs: default, tiny (the single-object set) and multi (`synthetic.multi_example`, with a
`regions` feature of TFDS boxes and texts).

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
      tfds.core.BuilderConfig(name="multi", description="shapes_multi with regions: 64/16/16 examples at 32 px"),
  ]
  SIZES = {"default": (64, {"train": 10_000, "validation": 1_000, "test": 1_000}),
           "tiny": (32, {"train": 64, "validation": 16, "test": 16}),
           "multi": (32, {"train": 64, "validation": 16, "test": 16})}

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "caption": tfds.features.Text(), "key": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=[n.replace(" ", "_") for n in synthetic.CLASS_NAMES])}
    if self.builder_config.name == "multi":  # TFDS boxes: (ymin, xmin, ymax, xmax)
      features["regions"] = tfds.features.Sequence({"bbox": tfds.features.BBoxFeature(),
                                                    "text": tfds.features.Text()})
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    size, counts = self.SIZES[self.builder_config.name]
    return {split: self._generate_examples(split, n, size) for split, n in counts.items()}

  def _generate_examples(self, split: str, n: int, size: int):
    multi = self.builder_config.name == "multi"
    for i in range(n):
      ex = (synthetic.multi_example if multi else synthetic.example)(
          i, seed=synthetic.SEED_OF_SPLIT[split], image_size=size)
      buf = io.BytesIO()
      Image.fromarray(ex["image"]).save(buf, format="JPEG", quality=95)
      out = {"image": io.BytesIO(buf.getvalue()), "caption": ex["caption"], "key": ex["key"], "label": ex["label"]}
      if multi:
        out["regions"] = {"bbox": [tfds.features.BBox(y0, x0, y1, x1) for x0, y0, x1, y1 in
                                   (r["box"] for r in ex["regions"])], "text": [r["text"] for r in ex["regions"]]}
      yield ex["key"], out


def prepare(data_dir: str, config: str = "default") -> str:
  """Prepares the set as ArrayRecord under data_dir; returns the dataset directory."""
  builder = VlmjaxShapes(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)
