"""Test setup: 8 fake CPU devices (so sharding is exercised) and small configs."""

import os

# XLA:CPU spends most test time compiling; LLVM -O0 halves that. (No persistent compilation
# cache: with jax 0.10.2, multi-device CPU executables loaded from it deadlock in collectives.)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A CoCa small enough to compile in a few seconds; same structure as coca_tiny.
MICRO = (
    ("batch_size", "16"), ("model.embed_dim", "32"),
    ("model.vision.width", "32"), ("model.vision.depth", "1"), ("model.vision.heads", "2"),
    ("model.vision.mlp_dim", "64"), ("model.text.width", "32"), ("model.text.depth", "1"),
    ("model.text.heads", "2"), ("model.text.mlp_dim", "64"), ("model.text.context_length", "40"),
    ("model.decoder.depth", "1"), ("model.decoder.heads", "2"), ("model.decoder.mlp_dim", "64"),
    ("model.pooler.n_queries", "4"), ("model.pooler.width", "32"), ("model.pooler.heads", "2"), ("optim.warmup_steps", "2"),
)


@pytest.fixture
def micro_cfg():
  """Returns a loader: micro_cfg(("key", "value"), ...) -> the micro CoCa config with overrides."""
  from vlmjax import config

  def load(*overrides, spec="configs/coca_tiny.py:evals=0"):
    return config.load(os.path.join(ROOT, spec), MICRO + tuple(overrides))
  return load


def restore_state(cfg, workdir: str):
  """The whole train state of `workdir`'s latest checkpoint (params, optimiser state, step), on the host."""
  from vlmjax import checkpoint, sharding, train_state
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
  state, _ = ckpt.restore(checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings))
  ckpt.close()
  return jax.device_get(state)


def random_params(s):
  """Random parameters for a `train_state.Setup` (normal * 0.1, layer-norm scales near 1), sharded as its state."""
  import numpy as np
  rng = np.random.default_rng(0)

  def init(path, a):
    return (rng.normal(size=a.shape) * 0.1 + (path[-1].key == "scale")).astype(a.dtype)
  return jax.device_put(jax.tree_util.tree_map_with_path(init, s.abstract_state.params), s.state_shardings.params)
