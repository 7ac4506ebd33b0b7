"""The optimiser: per-part learning-rate multipliers and freezing, against hand-computed updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax import config, optim, sharding, train, train_state


def _optim_cfg(**overrides):
  cfg = config.base(batch_size=8, total_steps=10).optim
  cfg.update(dict(warmup_steps=0, grad_clip=0.0, weight_decay=0.1, **overrides))
  return cfg


def test_lr_multipliers_scale_each_parts_update_and_its_weight_decay():
  params = {"vision": {"blocks": {"kernel": jnp.full((2, 2), 2.0)}}, "vision_proj": {"kernel": jnp.full((2, 2), 2.0)},
            "text": {"kernel": jnp.full((2, 2), 2.0)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  reference_tx, _ = optim.build(_optim_cfg(), 10)
  tx, _ = optim.build(_optim_cfg(lr_mult="vision=0.1,vision.blocks=0.5"), 10)
  ref, _ = reference_tx.update(grads, reference_tx.init(params), params)
  got, _ = tx.update(grads, tx.init(params), params)
  # the longest matching prefix wins; `vision_proj` is not under `vision`
  np.testing.assert_allclose(got["vision"]["blocks"]["kernel"], 0.5 * ref["vision"]["blocks"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(got["vision_proj"]["kernel"], ref["vision_proj"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(got["text"]["kernel"], ref["text"]["kernel"], rtol=1e-6)
  # AdamW's first step, by hand: -lr * (g / (|g| + eps) + wd * p), times the factor
  lr, eps = 1e-3, 1e-6
  np.testing.assert_allclose(ref["text"]["kernel"], -lr * (0.5 / (0.5 + eps) + 0.1 * 2.0), rtol=1e-5)


@pytest.mark.parametrize("spec, message", [("vision=0", "factor > 0"), ("vision", "not prefix=factor"),
                                           ("vision=0.1,vision=0.2", "each prefix once")])
def test_bad_lr_multipliers_are_one_line_errors(spec, message):
  with pytest.raises(config.ConfigError, match=message):
    optim.lr_multipliers(spec)


def test_lr_multipliers_with_freezing_build_shard_and_step(micro_cfg):
  cfg = micro_cfg(("optim.freeze", "vision"), ("optim.lr_mult", "text=0.1,decoder=2"), ("optim.warmup_steps", "0"))
  s = train_state.setup(cfg, sharding.make_mesh(cfg.mesh))
  state = train_state.init_state(cfg, s)
  host = jax.device_get(state.params)
  from test_train import _fixed_batch
  new, _ = train.compile_train_step(cfg, s)(state, _fixed_batch(cfg, s))
  new = jax.device_get(new.params)
  jax.tree.map(np.testing.assert_array_equal, new["vision"], host["vision"])
  assert not np.array_equal(new["text"]["token_embed"]["embedding"], host["text"]["token_embed"]["embedding"])
  with pytest.raises(config.ConfigError, match="optim.lr_mult: 'txt' names no parameter"):
    train_state.setup(micro_cfg(("optim.lr_mult", "txt=0.1")), s.mesh)
