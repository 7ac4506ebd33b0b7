"""Evaluation metrics against references: recall@k and zero-shot accuracy vs brute-force NumPy,
caption scores vs pycocoevalcap called directly, the Python PTB tokenizer vs the Java one."""

import shutil

import numpy as np
import pytest

from vlmjax.errors import ConfigError
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
  return {**{f"i2t_r{k}": np.mean(i2t < k) for k in ks}, **{f"t2i_r{k}": np.mean(t2i < k) for k in ks}}


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
  assert 0 < got["i2t_r1"] < got["i2t_r10"] < 1 and 0 < got["t2i_r1"] < 1


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
  assert got["t2i_r1"] == 0 and got["i2t_r1"] == 0
  # i2t: image 0 has 2 captions; with 3 wrong ties ahead it needs k > 3.
  assert retrieval.recall_at_k(ones, ones[[0, 1, 2, 3, 0]], np.array([0, 1, 2, 3, 0]), ks=(4,))["i2t_r4"] == 1 / 4


def test_identical_caption_strings_and_class_names_do_not_count_against_each_other():
  # Images 0 and 1 share the caption "a cat", which a model embeds identically: a perfect model.
  texts = ["a cat", "a cat", "a dog", "a bird"]
  ids = np.array([0, 1, 2, 3])
  emb = {t: v for t, v in zip(["a cat", "a dog", "a bird"], np.eye(3, dtype=np.float32))}
  text = np.stack([emb[t] for t in texts])
  image = text.copy()
  assert retrieval.recall_at_k(image, text, ids, ks=(1,))["i2t_r1"] == 0.5  # by index: both cats miss
  got = retrieval.recall_at_k(image, text, ids, ks=(1,), texts=texts)
  assert got["i2t_r1"] == 1.0 and got["t2i_r1"] == 0.5  # a "cat" text still cannot tell its image
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
  pred = np.argmax(image @ cls.T, 1)
  recall = np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)])  # balanced accuracy
  assert got == {"top1": np.mean(ranks < 1), "top5": np.mean(ranks < 5), "mean_per_class_recall": recall}
  assert got["top1"] == np.mean(pred == labels) and got["mean_per_class_recall"] != got["top1"]


def test_the_papers_prompts_are_shipped_and_named():
  """OpenAI's 80 ImageNet templates and curated class names (CLIP_benchmark's lists, with `{}`), the
  per-dataset sets, and one-line errors naming the valid sets."""
  imagenet = zero_shot.templates("openai_imagenet", "t")
  assert len(imagenet) == 80 and imagenet == zero_shot.templates("imagenet1k", "t")
  assert all(t.count("{}") == 1 for t in imagenet) and "a bad photo of a {}." in imagenet
  assert len(zero_shot.templates("cifar10", "t")) == 18 and len(zero_shot.templates("sun397", "t")) == 2
  names = zero_shot.class_names("", "", "imagenet1k", "c")
  assert len(names) == 1000 and names[0] == "tench" and names.count("sunglasses") == 2
  with pytest.raises(ConfigError, match=r"t='imagenet' is not a template set; valid: shapes, photo, plain, "
                                        r"openai_imagenet, dataset, caltech101"):
    zero_shot.templates("imagenet", "t")
  with pytest.raises(ConfigError, match=r"neither a file .* nor a shipped list \(caltech101, "):
    zero_shot.class_names("", "", "imagenet", "c")


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
    # Once wrong: apostrophe words, abbreviations, repeated ?!, words joined by a dot.
    "A clock tower reads ten o'clock.", "It's 5 o'clock somewhere", "a rock 'n' roll band", "a no. 5 bus on the street",
    "The cat's meow!!!", "Is this a dog?!", "a dog.a cat",
    "A man 5'10\" tall at -3.5 degrees, 5 1/2 cups, 50% off, 12/25/2014 at 5:30pm; .5 and 1,000.50 and 10:30 a.m.",
    "Mr. Smith's t-shirt says 'No. 1' (a.k.a. the U.S. champ) -- wow!! St. Louis, Mt. Fuji, Jan. 5, etc.",
    "the '90s y'all ma'am c'mon l'amour O'Neil 'em 'til 'tis 'twas don'ts gimme wanna can't won't I'm we've",
    "a pizza w/ cheese and/or ham, a 2x4, 3-way stop, 10-year-old boy, U.S.-made, non-U.S. flag, x-ray.",
    "A woman in a café eats jalapeño crème brûlée in Zürich; naïve résumé, Ørsted, straße, Москва, 中文",
    "A sign reading \u201cWelcome\u201d \u2014 it\u2019s in [brackets] {braces} <b>bold</b> \u00bd \u00a3 5 \u20ac3 "
    "\u00a2 \U0001F600...",
    "Visit www.example.com/menu or e-mail info@example.com, @chef #foodie :) :-( ^_^ photo.jpg C++ AT&T B&W",
    "Plan B. The dog ran... home????? ----- ... . . . a...b, dog., end.; etc.n't Jr. (555) 555-1234",
    "the bus no.", "5 people", "Dr. Who. The end", "a.m. p.m. e.g. i.e. U.S.A",  # the lexer looks across lines
]


@needs_java
def test_python_ptb_tokenizer_equals_java():
  refs = {i: [s] for i, s in enumerate(PTB_SENTENCES)}
  assert ptb.tokenize(refs) == captioning.tokenize(refs, "java")


def _fuzzed_captions(seed, n):
  """Caption-like strings: words, contractions, abbreviations, numbers, symbols, odd spacing."""
  rng = np.random.default_rng(seed)
  words = ("a the man dog cats sitting on red large it's isn't can't I'm they'll man's dogs' o'clock 'n' "
           "y'all '90s no. No. 5 Mr. St. U.S. a.m. e.g. etc. Inc. b. 3.5 -2 1,000 5:30 1/2 50% 5'10 2x4 "
           "t-shirt well-known w/ and/or AT&T C++ www.x.com a@b.com @user #tag :) café naïve ½ £ € 😀 "
           "\u201cok\u201d \u2019s \u2014 ... !!! ?! -- ( ) [ ] { } < > \" ' ` , . ; : ! ? - / & $ # * + = ~").split()
  glue = [" "] * 6 + ["", "  "]
  return ["".join(str(rng.choice(words)) + str(rng.choice(glue)) for _ in range(rng.integers(1, 12))).strip()
          for _ in range(n)]


@needs_java
def test_python_ptb_tokenizer_equals_java_on_fuzzed_captions():
  refs = {i: [s] for i, s in enumerate(_fuzzed_captions(0, 1000))}
  py, java = ptb.tokenize(refs), captioning.tokenize(refs, "java")
  assert [(refs[k][0], py[k][0], java[k][0]) for k in refs if py[k] != java[k]] == []


def test_python_ptb_tokenizer_matches_recorded_java_output():
  # What pycocoevalcap's Java tokenizer returned for these, so machines without Java check them too.
  want = {"A clock tower reads ten o'clock.": "a clock tower reads ten o'clock",
          "a rock 'n' roll band": "a rock 'n' roll band", "a no. 5 bus on the street": "a no. 5 bus on the street",
          "The cat's meow!!! Is this a dog?!": "the cat 's meow !!! is this a dog ?!", "a dog.a cat": "a dog.a cat",
          "5'10\" tall, -3.5 degrees, 5 1/2 cups": "5 10 tall -3.5 degrees 5\u00a01/2 cups",
          "(a.k.a. the U.S. champ) -- Jan. 5": "-lrb- a.k.a. the u.s. champ -rrb- jan. 5",
          "y'all can't gonna 'tis": "y' all ca n't gon na 't is", "Plan B. The dog": "plan b the dog",
          "caf\u00e9 \u201cok\u201d \u2014 \u00bd \u00a3 \U0001F600": "caf\u00e9 ok 1/2 #",
          "w/ and/or, 3-way, U.S.-made": "w / and/or 3-way u.s.-made"}
  assert ptb.tokenize({i: [s] for i, s in enumerate(want)}) == {i: [v] for i, v in enumerate(want.values())}


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
