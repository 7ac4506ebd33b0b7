"""Evaluation metrics against references: recall@k and zero-shot accuracy vs brute-force NumPy,
caption scores vs pycocoevalcap called directly, the Python PTB tokenizer vs the Java one."""

import shutil

import numpy as np
import pytest

from vlmjax.evals import captioning, ptb, ranking, retrieval, zero_shot

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not JAVA, reason="needs java (pycocoevalcap's PTBTokenizer)")


def brute_ranks(query, query_ids, cands, cand_ids):
  """Position of the first correct candidate when sorting by score, wrong before correct on ties."""
  scores = np.asarray(query, np.float64) @ np.asarray(cands, np.float64).T
  out = []
  for i in range(len(query)):
    order = sorted(range(len(cands)), key=lambda j: (-scores[i, j], cand_ids[j] == query_ids[i]))
    out.append(next((p for p, j in enumerate(order) if cand_ids[j] == query_ids[i]), len(cands)))
  return np.asarray(out)


def brute_recall(image, text, text_image_ids, ks):
  image_ids = np.arange(len(image))
  i2t = brute_ranks(image, image_ids, text, text_image_ids)
  t2i = brute_ranks(text, text_image_ids, image, image_ids)
  return {**{f"i2t@{k}": np.mean(i2t < k) for k in ks}, **{f"t2i@{k}": np.mean(t2i < k) for k in ks}}


def _captions_per_image(rng, num_images, max_per_image):
  counts = rng.integers(1, max_per_image + 1, num_images)
  return rng.permutation(np.repeat(np.arange(num_images), counts))


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_brute_force_with_several_captions(seed):
  rng = np.random.default_rng(seed)
  ids = _captions_per_image(rng, 37, 5)
  image = rng.normal(size=(37, 16)).astype(np.float32)
  text = (image[ids] + rng.normal(scale=3.0, size=(len(ids), 16))).astype(np.float32)
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  got = retrieval.recall_at_k(image, text, ids, ks=(1, 5, 10))
  want = brute_recall(image, text, ids, (1, 5, 10))
  assert got.keys() == want.keys()
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-12), k
  assert 0 < got["i2t@1"] < got["i2t@10"] < 1 and 0 < got["t2i@1"] < 1


def test_recall_ties_are_pessimistic_and_match_brute_force(monkeypatch):
  rng = np.random.default_rng(2)
  ids = _captions_per_image(rng, 50, 4)
  # Small integer vectors: dot products are exact in float32 and tie often.
  image = rng.integers(-1, 2, size=(50, 3)).astype(np.float32)
  text = rng.integers(-1, 2, size=(len(ids), 3)).astype(np.float32)
  scores = image @ text.T
  assert any(len(np.unique(row)) < len(row) for row in scores)
  monkeypatch.setattr(ranking, "MAX_CHUNK_SCORES", 64)  # many chunks, each padded
  got = retrieval.recall_at_k(image, text, ids, ks=(1, 3, 20))
  want = brute_recall(image, text, ids, (1, 3, 20))
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_recall_of_constant_embeddings_is_zero_not_one():
  ones = np.ones((4, 2), np.float32) / np.sqrt(2)
  got = retrieval.recall_at_k(ones, ones[[0, 1, 2, 3, 0]], np.array([0, 1, 2, 3, 0]), ks=(1, 2))
  assert got["t2i@1"] == 0 and got["i2t@1"] == 0
  # i2t: image 0 has 2 captions; with 3 wrong ties ahead it needs k > 3.
  assert retrieval.recall_at_k(ones, ones[[0, 1, 2, 3, 0]], np.array([0, 1, 2, 3, 0]), ks=(4,))["i2t@4"] == 1 / 4


def test_identical_caption_strings_and_class_names_do_not_count_against_each_other():
  # Images 0 and 1 share the caption "a cat", which a model embeds identically: a perfect model.
  texts = ["a cat", "a cat", "a dog", "a bird"]
  ids = np.array([0, 1, 2, 3])
  emb = {t: v for t, v in zip(["a cat", "a dog", "a bird"], np.eye(3, dtype=np.float32))}
  text = np.stack([emb[t] for t in texts])
  image = text.copy()
  assert retrieval.recall_at_k(image, text, ids, ks=(1,))["i2t@1"] == 0.5  # by index: both cats miss
  got = retrieval.recall_at_k(image, text, ids, ks=(1,), texts=texts)
  assert got["i2t@1"] == 1.0 and got["t2i@1"] == 0.5  # a "cat" text still cannot tell its image
  # Zero-shot: a class listed twice under one name (ImageNet's "sunglasses").
  cls = np.eye(3, dtype=np.float32)[[0, 1, 1]]
  labels = np.array([0, 1, 2])
  assert zero_shot.accuracy(cls, labels, cls, ks=(1,))["top1"] == 1 / 3
  assert zero_shot.accuracy(cls, labels, cls, ks=(1,), names=["cat", "sunglasses", "sunglasses"])["top1"] == 1.0


def test_recall_rejects_images_without_captions():
  with pytest.raises(ValueError, match="no caption"):
    retrieval.recall_at_k(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


def test_zero_shot_classifier_and_accuracy_match_numpy():
  rng = np.random.default_rng(3)
  prompts = rng.normal(size=(6 * 3, 8)).astype(np.float32)  # 6 classes x 3 templates, class-major
  cls = zero_shot.classifier(prompts, 6)
  mean = prompts.reshape(6, 3, 8).mean(1)
  np.testing.assert_allclose(cls, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-6)
  image = rng.normal(size=(40, 8)).astype(np.float32)
  labels = rng.integers(0, 6, 40)
  got = zero_shot.accuracy(image, labels, cls, ks=(1, 5))
  ranks = brute_ranks(image, labels, cls, np.arange(6))
  assert got == {"top1": np.mean(ranks < 1), "top5": np.mean(ranks < 5)}
  assert got["top1"] == np.mean(np.argmax(image @ cls.T, 1) == labels)


PTB_SENTENCES = [
    "A man's \"red\" colour bike (at the centre), isn't it? Yes... Mr. Smith -- well-known.",
    "The dog's toys cost $5.50, 1,000 items; e.g. cats & dogs! I'm gonna cannot",
    "A   small red circle , center.", "top left: large blue square",
    "\"Hello,\" she said. 'Quoted' text. 3.5-inch 12:30 a/b x*y [bracket] {brace}",
    "can't won't don't we'll they're you've she'd", "A man riding a wave on top of a surfboard.",
    "A black-and-white photo of a train at the station.",
    "An older woman holding a 5-year-old child's hand while crossing 42nd St.",
    "There are 3 dogs: a poodle, a pug and a terrier.", "50% off sale at the store #1 today",
    "What is that? A plate with broccoli, rice and chicken...", "plan b. and the letter x. then",
    "Someone's 'homemade' pizza with pepperoni & cheese", "bottom right: small cyan cross", "",
]


@needs_java
def test_python_ptb_tokenizer_equals_java():
  refs = {i: [s] for i, s in enumerate(PTB_SENTENCES)}
  assert ptb.tokenize(refs) == captioning.tokenize(refs, "java")


def _caption_fixture():
  refs = {"a": ["A small red circle, center.", "a red circle in the middle"],
          "b": ["top left: large blue square", "A big blue square at the top-left."],
          "c": ["small cyan cross at bottom right"], 7: ["a man's bike (red) isn't here", "the bike"]}
  preds = {"a": "a small red circle at the center", "b": "large blue square, top left.",
           "c": "a small cyan cross", 7: "a man's red bike"}
  return preds, refs


def _pycocoevalcap_direct(gts, res):
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  return {"cider": Cider().compute_score(gts, res)[0], "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
          "rouge_l": Rouge().compute_score(gts, res)[0]}


@needs_java
def test_caption_scores_equal_pycocoevalcap_with_its_tokenizer():
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  preds, refs = _caption_fixture()
  gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
  res = PTBTokenizer().tokenize({k: [{"caption": c}] for k, c in preds.items()})
  want = _pycocoevalcap_direct(gts, res)
  got = captioning.score(preds, refs)
  assert set(got) == {"cider", "bleu4", "rouge_l"}
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
  assert captioning.score(preds, refs, tokenizer="python") == got
  assert 0 < got["bleu4"] < 1 and got["cider"] > 0


def test_caption_scores_with_python_tokenizer_equal_pycocoevalcap_scorers():
  preds, refs = _caption_fixture()
  gts, res = ptb.tokenize(refs), ptb.tokenize({k: [v] for k, v in preds.items()})
  assert gts["a"] == ["a small red circle center", "a red circle in the middle"]
  assert gts[7][0] == "a man 's bike -lrb- red -rrb- is n't here"
  want = _pycocoevalcap_direct(gts, res)
  got = captioning.score(preds, refs, tokenizer="python")
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
  perfect = captioning.score({k: v[0] for k, v in refs.items()}, refs, tokenizer="python")
  assert perfect["bleu4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)


def test_caption_score_rejects_mismatched_ids():
  with pytest.raises(ValueError, match="differ in ids"):
    captioning.score({1: "a"}, {2: ["a"]})
