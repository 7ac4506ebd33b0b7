"""Exact large-batch training in microbatches (GradCache, Gao et al. 2021): `optim.microbatches`.

With k > 1 microbatches the train step's loss and gradient are those of the whole global batch,
computed in three passes, so that activations are held for one microbatch at a time:

  1. embed: the model's forward on each microbatch (a `lax.scan`; nothing kept for a backward pass)
     gives every image and text embedding, and the logit scale and bias;
  2. the contrastive loss over the whole batch from those embeddings, as `losses.composite` computes
     it (softmax, sigmoid, or sigmoid_ring on the sharded embeddings), and its gradient with respect
     to the embeddings, the scale and the bias;
  3. for each microbatch (a second scan), the forward again, differentiated: the gradient of
     <embeddings, their cached gradient> (a VJP with those cotangents; the scale's and bias's in the
     first microbatch only) plus the microbatch's share of the per-example terms (the caption loss,
     weighted by its share of the batch's caption tokens, so the sum is the global token mean).
     Parameter gradients are summed in the scan's carry.

This equals the single pass's loss and gradient to float32 round-off, for one more forward pass.
Microbatch m takes the m-th slice of every device's rows, so each microbatch is sharded as the
batch is and splitting moves no data; the embeddings are put back in the batch's order (and
sharding) for the contrastive loss. Randomness in the model (patch dropout, CapPa's masks):
microbatch m gets the step's key folded with m (`jax.random.fold_in(key, m)`), so its draws differ
from the single pass's (equally random, and still a function of (seed, step, m)).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlmjax import losses, models
from vlmjax.errors import ConfigError
from vlmjax.models.output import Output

GLOBAL_TERM = "contrastive"  # computed once over the whole batch, from the embeddings (step 2)


def caption_tokens(batch: dict) -> jax.Array:
  """The caption tokens a microbatch's caption loss averages over (`losses.caption_term`'s mask)."""
  return jnp.sum(losses.caption_targets(batch)[1]).astype(jnp.float32)


# Terms computed per microbatch (step 3), by what each averages over: microbatch m's value weighs
# count_m / (the batch's count). A term missing here cannot run in microbatches.
SHARES = {"caption": caption_tokens}


def batch_shards(mesh: Mesh, batch_axes: tuple[str, ...]) -> int:
  """How many pieces the batch is split into over the mesh (one per device row of the batch axes)."""
  return math.prod(mesh.shape[a] for a in batch_axes)


def check(microbatches: int, batch_size: int, mesh: Mesh, batch_axes: tuple[str, ...]) -> None:
  """A one-line ConfigError for a microbatch count that does not split each device's batch evenly."""
  if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
    raise ConfigError(f"optim.microbatches={microbatches!r} must be an int >= 1 (1: the whole batch in one pass)")
  per_device = batch_size // batch_shards(mesh, batch_axes)
  if per_device % microbatches:
    valid = [d for d in range(1, per_device + 1) if per_device % d == 0]
    raise ConfigError(f"optim.microbatches={microbatches} does not divide the per-device batch {per_device} "
                      f"(batch_size {batch_size} over {batch_shards(mesh, batch_axes)} batch shards); valid: "
                      f"{', '.join(map(str, valid))}")


def _spec(batch_axes: tuple[str, ...]):
  return batch_axes if len(batch_axes) != 1 else batch_axes[0]


def split(x: jax.Array, k: int, mesh: Mesh, batch_axes: tuple[str, ...]) -> jax.Array:
  """[B, ...] -> [k, B/k, ...]: microbatch m is the m-th of k slices of each device's rows."""
  n, B, rest = batch_shards(mesh, batch_axes), x.shape[0], x.shape[1:]
  y = x.reshape(n, k, B // (n * k), *rest).swapaxes(0, 1).reshape(k, B // k, *rest)
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, P(None, _spec(batch_axes))))


def merge(y: jax.Array, mesh: Mesh, batch_axes: tuple[str, ...]) -> jax.Array:
  """The inverse of `split`: [k, B/k, ...] -> [B, ...] in the batch's order and sharding."""
  n, (k, b), rest = batch_shards(mesh, batch_axes), y.shape[:2], y.shape[2:]
  x = y.reshape(k, n, b // n, *rest).swapaxes(0, 1).reshape(k * b, *rest)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(_spec(batch_axes))))


def _terms(cfg: ml_collections.ConfigDict) -> tuple[bool, list]:
  """(whether the contrastive term is on, [(name, Term)] of the per-microbatch terms)."""
  active = [(name, t) for name, t in losses.TERMS.items() if t.weight in cfg and cfg[t.weight]]
  local = [(name, t) for name, t in active if name != GLOBAL_TERM]
  for name, _ in local:
    if name not in SHARES:
      raise ConfigError(f"loss term {name!r} cannot run with optim.microbatches > 1 (no weighting in "
                        f"vlmjax.microbatch.SHARES); use optim.microbatches=1")
  contrastive = len(local) < len(active) and losses.CONTRASTIVE.lookup(cfg.contrastive) is not None
  return contrastive, local


def loss_and_grads(params, batch: dict, *, graphdef: nnx.GraphDef, rng: jax.Array, loss_cfg: ml_collections.ConfigDict,
                   mesh: Mesh, batch_axes: tuple[str, ...], microbatches: int) -> tuple[jax.Array, dict, dict]:
  """(loss, metrics, gradient) of `losses.composite` on the global `batch`, in `microbatches` passes
  (see the module docstring); the same metric names as the single pass."""
  k, ctx = microbatches, losses.Context(mesh=mesh, batch_axes=batch_axes)
  contrastive, local = _terms(loss_cfg)
  mbs = jax.tree.map(lambda x: split(x, k, mesh, batch_axes), batch)

  def forward(p, mb, m) -> Output:
    model = nnx.merge(graphdef, p)
    return model(mb["image"], mb["text"], train=True, rng=rng if k == 1 else jax.random.fold_in(rng, m),
                 **models.extra_inputs(mb))

  total, metrics, cot = jnp.zeros((), jnp.float32), {}, None
  if contrastive:
    emb = embed(params, mbs, forward, k, mesh, batch_axes)
    value, term_metrics, cot = contrastive_grads(*emb, batch, loss_cfg, ctx)
    metrics.update(term_metrics)
    total = total + loss_cfg[losses.TERMS[GLOBAL_TERM].weight] * value
    cot = (split(cot[0], k, mesh, batch_axes), split(cot[1], k, mesh, batch_axes), *cot[2:])
  shares = {name: jax.vmap(SHARES[name])(mbs) for name, _ in local}
  shares = {name: c / jnp.maximum(jnp.sum(c), 1.0) for name, c in shares.items()}
  grads, values = backward(params, mbs, cot, shares, forward, local, loss_cfg, ctx, k)
  for name, term in local:
    if name in values:  # each microbatch's value and metrics, weighted by its share
      value, term_metrics = jax.tree.map(lambda v: jnp.sum(v * shares[name]), values[name])
      metrics.update(term_metrics)
      total = total + loss_cfg[term.weight] * value
  metrics["loss"] = total
  return total, metrics, grads


def embed(params, mbs: dict, forward, k: int, mesh: Mesh, batch_axes: tuple[str, ...]):
  """Step 1: (image_emb_BxE, text_emb_BxE, logit_scale, logit_bias or None), forward only."""
  def body(_, xs):
    mb, m = xs
    out = forward(params, mb, m)
    return None, (out.image_emb, out.text_emb, out.logit_scale, out.logit_bias)

  _, (img, txt, scale, bias) = jax.lax.scan(body, None, (mbs, jnp.arange(k)))
  return merge(img, mesh, batch_axes), merge(txt, mesh, batch_axes), scale[0], None if bias is None else bias[0]


def contrastive_grads(img, txt, scale, bias, batch: dict, cfg: ml_collections.ConfigDict, ctx: losses.Context):
  """Step 2: (contrastive value, its metrics, the weighted value's gradient with respect to
  (image_emb, text_emb, logit_scale, logit_bias))."""
  weight = cfg[losses.TERMS[GLOBAL_TERM].weight]

  def f(img, txt, scale, bias):
    out = Output(image_emb=img, text_emb=txt, logit_scale=scale, logit_bias=bias)
    value, term_metrics = losses.contrastive_term(out, batch, cfg, ctx)
    return weight * value, (value, term_metrics)

  (_, (value, term_metrics)), cot = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(img, txt, scale, bias)
  return value, term_metrics, cot


def backward(params, mbs: dict, cot, shares: dict, forward, local: list, cfg: ml_collections.ConfigDict,
             ctx: losses.Context, k: int) -> tuple[dict, dict]:
  """Step 3: (the parameter gradient summed over microbatches, {term: (value, metrics), each [k]})."""
  g_img, g_txt, g_scale, g_bias = cot if cot is not None else (jnp.zeros(k), jnp.zeros(k), None, None)

  def surrogate(p, mb, m, g_img_m, g_txt_m, share_m):
    out = forward(p, mb, m)
    s, values = jnp.zeros((), jnp.float32), {}
    if cot is not None:  # <emb, d loss / d emb>: its gradient is the VJP with the cached cotangents
      s = s + jnp.vdot(out.image_emb, g_img_m) + jnp.vdot(out.text_emb, g_txt_m)
      head = out.logit_scale * g_scale + (0.0 if g_bias is None else out.logit_bias * g_bias)
      s = s + jnp.where(m == 0, head, 0.0)  # the scale and bias are shared: their cotangent once
    for name, term in local:
      added = term.fn(out, mb, cfg, ctx)
      if added is not None:
        values[name] = added
        s = s + cfg[term.weight] * share_m[name] * added[0]
    return s, values

  def body(acc, xs):
    g, values = jax.grad(surrogate, has_aux=True)(params, *xs)
    return jax.tree.map(jnp.add, acc, g), values

  zeros = jax.tree.map(jnp.zeros_like, params)
  return jax.lax.scan(body, zeros, (mbs, jnp.arange(k), g_img, g_txt, shares))
