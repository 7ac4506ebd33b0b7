"""The train step compiled once per batch shape: a NaFlex run drawing its patch budget per batch
(`data.train.budgets`) gets one compiled step per budget, all compiled before the first step.

`PerShape` calls the step compiled for the batch's shapes; a batch of any other shape is a one-line
ValueError, never a compile inside the loop (so the compile count is the number of budgets, never the
number of image shapes: NaFlex's images of any grid share their budget's padded shape).
"""

from __future__ import annotations

import jax


def shapes_of(batch) -> tuple:
  """The key of a batch (arrays or ShapeDtypeStructs): each leaf's path and shape, in pytree order."""
  leaves = jax.tree_util.tree_leaves_with_path(batch)
  return tuple((jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves)


class PerShape:
  """Compiled steps by batch shape: `PerShape({shapes_of(abstract_batch): compiled, ...})(state, batch)`."""

  def __init__(self, steps: dict):
    self.steps = steps

  def __call__(self, state, batch):
    key = shapes_of(batch)
    step = self.steps.get(key)
    if step is None:
      known = "; ".join(str(dict(k)) for k in self.steps)
      raise ValueError(f"no train step was compiled for a batch of shapes {dict(key)}; compiled: {known}")
    return step(state, batch)

  def __len__(self) -> int:
    return len(self.steps)
