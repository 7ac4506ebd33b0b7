"""Decoding on a toy model (fast to compile): greedy, beam and sampling against plain Python/NumPy.

(Greedy decoding of a real CoCa against a naive loop is in test_evals.py, which shares its model.)
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlmjax.evals import decode

V, EOS = 5, 2


class Toy:
  """Logits at position t depend on the image and the tokens at t and t-1 (causal)."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    self.a, self.b = (jnp.asarray(rng.normal(size=(V, V)) * 2, jnp.float32) for _ in range(2))

  def caption_context(self, image):
    return image.reshape(image.shape[0], 1, -1)[..., :V]

  def caption_logits(self, ctx, text_BxL):
    prev = jnp.pad(text_BxL, ((0, 0), (1, 0)))[:, :-1]
    return self.a[text_BxL] + self.b[prev] + ctx


def _images(n, seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 1, V, 1)), jnp.float32)


def _logp(model, image, prefix):
  """The toy model's next-token log-probabilities after `prefix`, in NumPy."""
  prev = prefix[-2] if len(prefix) > 1 else 0
  logits = np.asarray(model.a, np.float64)[prefix[-1]] + np.asarray(model.b, np.float64)[prev]
  logits += np.asarray(image, np.float64).reshape(-1)[:V]
  return logits - logits.max() - np.log(np.sum(np.exp(logits - logits.max())))


def _naive_greedy(model, image, max_len):
  prefix, out = [1], []
  while len(out) < max_len and (not out or out[-1] != EOS):
    out.append(int(np.argmax(_logp(model, image, prefix))))
    prefix.append(out[-1])
  return out + [0] * (max_len - len(out))


def _run(model, images, **kw):
  return np.asarray(jax.jit(lambda x, r: decode.generate(model, x, rng=r, **kw))(images, jax.random.key(0)))


def test_greedy_equals_python_argmax_loop():
  model, images = Toy(), _images(6)
  got = _run(model, images, max_len=6)
  assert got.tolist() == [_naive_greedy(model, images[i], 6) for i in range(6)]
  assert (got == EOS).any(), "the toy model should finish some captions early"


def test_beam_of_one_and_top_k_one_and_tiny_top_p_are_greedy():
  model, images = Toy(), _images(6)
  greedy = _run(model, images, max_len=5)
  np.testing.assert_array_equal(_run(model, images, max_len=5, method="beam", beam_size=1), greedy)
  np.testing.assert_array_equal(_run(model, images, max_len=5, method="sample", top_k=1, temperature=3.0), greedy)
  np.testing.assert_array_equal(_run(model, images, max_len=5, method="sample", top_p=1e-6), greedy)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_wide_enough_is_exhaustive_search(length_penalty):
  model, images, T = Toy(seed=3), _images(3, seed=4), 3
  got = _run(model, images, max_len=T, method="beam", beam_size=V**T, length_penalty=length_penalty)
  for i in range(len(images)):
    best, best_seq = -np.inf, None
    for seq in itertools.product(range(V), repeat=T):
      seq = list(seq[:seq.index(EOS) + 1]) if EOS in seq else list(seq)
      score = sum(_logp(model, images[i], [1] + seq[:t])[seq[t]] for t in range(len(seq)))
      norm = score / len(seq) ** length_penalty
      if norm > best + 1e-9:
        best, best_seq = norm, seq
    assert got[i].tolist() == best_seq + [0] * (T - len(best_seq)), i


def _beam_reference(model, image, K, T, alpha):
  """Beam search with a pool of finished captions, step by step in NumPy (no early stop: the
  implementation's stopping rule must not change the answer)."""
  live, pool = [(0.0, [])], []
  for t in range(T):
    cands = [(score + lp, toks + [v]) for score, toks in live
             for v, lp in enumerate(_logp(model, image, [1] + toks))]
    cands = sorted(cands, key=lambda c: -c[0])[:2 * K]
    pool = sorted(pool + [(sc / (t + 1) ** alpha, toks) for sc, toks in cands if toks[-1] == EOS],
                  key=lambda c: -c[0])[:K]
    live = [c for c in cands if c[1][-1] != EOS][:K]
  best = max(pool + [(sc / T ** alpha, toks) for sc, toks in live], key=lambda c: c[0])[1]
  return best + [0] * (T - len(best))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_narrow_beam_keeps_finished_captions_apart_from_live_beams(length_penalty):
  model, images, K, T = Toy(seed=5), _images(24, seed=6), 2, 5
  got = _run(model, images, max_len=T, method="beam", beam_size=K, length_penalty=length_penalty)
  assert got.tolist() == [_beam_reference(model, images[i], K, T, length_penalty) for i in range(len(images))]


def _filter_reference(logits, top_k, top_p):
  out = logits.copy()
  if top_k:
    out[out < np.sort(logits)[::-1][top_k - 1]] = -np.inf
  if top_p < 1:
    order = np.argsort(-out, kind="stable")
    p = np.exp(out[order] - out[order][0])
    p /= p.sum()
    keep = np.cumsum(p) - p < top_p
    keep[0] = True  # the most likely token always stays
    out[out < out[order][keep].min()] = -np.inf
  return out


def test_filter_logits_matches_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(20, 11)).astype(np.float32)
  logits[:, 3] = logits[:, 4]  # ties
  for top_k, top_p in [(3, 1.0), (0, 0.6), (4, 0.5), (11, 0.99), (1, 1.0), (0, 0.0)]:  # p=0: the top token
    got = np.asarray(decode.filter_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    want = np.stack([_filter_reference(row, top_k, top_p) for row in logits])
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


def test_sampling_follows_the_filtered_distribution():
  model = Toy(seed=6)
  images = jnp.repeat(_images(1, seed=7), 4000, axis=0)
  logits = np.asarray(model.caption_logits(model.caption_context(images[:1]), jnp.ones((1, 1), jnp.int32))[0, 0])
  for kw in [dict(top_k=3, temperature=1.5), dict(top_p=0.8)]:
    first = _run(model, images, max_len=1, method="sample", **kw)[:, 0]
    want = _filter_reference(logits / kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0))
    p = np.exp(want - want.max())
    p /= p.sum()
    freq = np.bincount(first, minlength=V) / len(first)
    assert set(np.nonzero(freq)[0]) <= set(np.nonzero(p)[0])
    np.testing.assert_allclose(freq, p, atol=0.03)
