"""Tokenizers named by spec: `bytes`, `sentencepiece:MODEL_PATH`, `hf:TOKENIZER_JSON_PATH`,
`open_clip:PATH` (open_clip's BPE: `vlmjax convert`'s tokenizer.json for it, or open_clip's own
bpe_simple_vocab_16e6.txt.gz, with open_clip's text cleaning: ftfy, HTML entities, whitespace, `str.lower`),
`gemma:MODEL_PATH` (a Gemma sentencepiece model as SigLIP 2 uses it, below).

`gemma:` is SigLIP 2's text preprocessing (big_vision's `lower|tok(model="gemma", bos="no",
eos="sticky")`, pad 0): A-Z lower-cased (big_vision's `lower` is `tf.strings.lower`, ASCII only),
no bos, eos appended and kept when truncated, padded with <pad> = 0. It equals transformers'
`GemmaTokenizer(add_bos_token=False, add_eos_token=True)` on the same .model, padding="max_length"
and truncation, fed the ASCII-lower-cased text (HF's docs leave lower-casing to the user);
transformers' `Siglip2Tokenizer` lower-cases all of Unicode, so non-ASCII capitals differ. Like
big_vision (sentencepiece itself), literal control-token text ("<eos>") stays text, where
transformers turns it into the special id. `sentencepiece:` on a Gemma model adds <bos>.

Every tokenizer maps text to int32 [L] with 0 = pad: [bos?] ids... eos, truncated
with the eos kept, zero-padded. A vocabulary whose id 0 is not padding (most
sentencepiece models put <unk> there) is shifted up by one, so `vocab_size` is
the model's size plus one. The byte-level tokenizer maps byte b to b + 3 (1 = bos, 2 = eos).
"""

from __future__ import annotations

import os

import numpy as np

from vlmjax.errors import ConfigError

PAD, BOS, EOS = 0, 1, 2
SPECS = "bytes, sentencepiece:MODEL_PATH, hf:TOKENIZER_JSON_PATH, open_clip:TOKENIZER_JSON_OR_BPE_GZ, gemma:MODEL_PATH"
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _pack(ids: list[int], length: int, eos: int | None) -> np.ndarray:
  if len(ids) > length:
    ids = ids[:length - 1] + [eos] if eos is not None else ids[:length]
  out = np.zeros((length,), np.int32)
  out[:len(ids)] = ids
  return out


class ByteTokenizer:
  """UTF-8 bytes as tokens: no vocabulary file, any text, 259 ids."""

  vocab_size = 256 + 3
  bos, eos = BOS, EOS

  def encode(self, text: str, length: int) -> np.ndarray:
    """[bos, bytes..., eos] truncated (eos kept) and zero-padded to `length`."""
    return _pack([BOS, *(b + 3 for b in text.encode("utf-8")), EOS], length, EOS)

  def decode(self, ids) -> str:
    out = bytearray()
    for i in np.asarray(ids).tolist():
      if i == EOS:
        break
      if i >= 3:
        out.append(i - 3)
    return out.decode("utf-8", errors="replace")


class _VocabTokenizer:
  """Shared bos/eos/pad handling for vocabulary-file tokenizers (`_ids`, `_detok` in subclasses)."""

  def _setup(self, size: int, pad: int | None, bos: int | None, eos: int | None) -> None:
    self.shift = 0 if pad == 0 else 1  # make id 0 the padding id
    self.vocab_size = size + self.shift
    self.bos = None if bos is None or bos < 0 else bos + self.shift
    self.eos = None if eos is None or eos < 0 else eos + self.shift

  def encode(self, text: str, length: int) -> np.ndarray:
    ids = [i + self.shift for i in self._ids(text)]
    return _pack(([self.bos] if self.bos is not None else []) + ids +
                 ([self.eos] if self.eos is not None else []), length, self.eos)

  def decode(self, ids) -> str:
    out = []
    for i in np.asarray(ids).tolist():
      if i == self.eos:
        break
      if i != PAD and i != self.bos:
        out.append(i - self.shift)
    return self._detok(out)


class SentencePieceTokenizer(_VocabTokenizer):
  """A sentencepiece `.model` file."""

  def __init__(self, path: str):
    import sentencepiece as spm
    try:
      self._sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError) as e:
      raise ConfigError(f"sentencepiece model {path!r} could not be read: {str(e).splitlines()[0]}") from None
    self._setup(self._sp.get_piece_size(), self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id())

  def _ids(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def _detok(self, ids: list[int]) -> str:
    return self._sp.decode(ids)


class GemmaTokenizer(SentencePieceTokenizer):
  """A Gemma sentencepiece `.model` as SigLIP 2 tokenizes: ASCII lower-case, no bos, eos, pad 0."""

  def __init__(self, path: str):
    super().__init__(path)
    self.bos = None

  def _ids(self, text: str) -> list[int]:
    return self._sp.encode(text.translate(ASCII_LOWER))


class HFTokenizer(_VocabTokenizer):
  """A Hugging Face `tokenizer.json` (the `tokenizers` library; no transformers)."""

  SPECIAL = {"pad": ("<pad>", "[PAD]", "<|pad|>"), "bos": ("<s>", "[CLS]", "<|startoftext|>", "<bos>"),
             "eos": ("</s>", "[SEP]", "<|endoftext|>", "<eos>")}

  def __init__(self, path: str):
    self._tok = self._load(path)
    find = lambda names: next((i for n in names if (i := self._tok.token_to_id(n)) is not None), None)
    self._setup(self._tok.get_vocab_size(), find(self.SPECIAL["pad"]), find(self.SPECIAL["bos"]),
                find(self.SPECIAL["eos"]))

  def _load(self, path: str):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(path)

  def _ids(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def _detok(self, ids: list[int]) -> str:
    return self._tok.decode(ids)


class OpenClipTokenizer(HFTokenizer):
  """open_clip's SimpleTokenizer (its default `lower` cleaning), exactly: the text is cleaned in Python as
  open_clip does (ftfy.fix_text, html.unescape twice, whitespace collapsed by `str.split`, `str.lower`,
  which lower-cases a Greek final sigma to ς where per-character lowering gives σ), then split and
  merged by the `tokenizers` BPE with its own normalizer switched off."""

  def _load(self, path: str):
    from tokenizers import Tokenizer, normalizers
    if path.endswith(".gz"):
      import tempfile
      from vlmjax.convert import tokenizer as bpe
      with tempfile.TemporaryDirectory() as tmp:
        tok = Tokenizer.from_file(bpe.openclip_tokenizer_json(path, os.path.join(tmp, "tokenizer.json")))
    else:
      tok = Tokenizer.from_file(path)
    tok.normalizer = normalizers.Sequence([])
    return tok

  def _ids(self, text: str) -> list[int]:
    return self._tok.encode(openclip_clean(text), add_special_tokens=False).ids


def openclip_clean(text: str) -> str:
  """open_clip's `_clean_lower`: ftfy, HTML entities (twice), whitespace, lower case."""
  import html
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


TOKENIZERS = {"bytes": ByteTokenizer, "sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer,
              "open_clip": OpenClipTokenizer, "gemma": GemmaTokenizer}


def reads_hf_file(spec: str, path: str) -> bool:
  """Whether the tokenizer `spec` reads the tokenizer.json at `path` (as `hf:` or `open_clip:`)."""
  kind, _, given = spec.partition(":")
  return kind in ("hf", "open_clip") and os.path.abspath(given) == os.path.abspath(path)


def build(spec: str):
  """`bytes` | `sentencepiece:PATH` | `hf:PATH` | `open_clip:PATH` | `gemma:PATH` -> a tokenizer; a ConfigError
  names a bad spec or file."""
  kind, _, path = spec.partition(":")
  if kind not in TOKENIZERS or (kind == "bytes") != (not path):
    raise ConfigError(f"data tokenizer {spec!r} is unknown; valid: {SPECS}")
  if kind == "bytes":
    return ByteTokenizer()
  if not os.path.exists(path):
    raise ConfigError(f"data tokenizer {spec!r}: file {path!r} does not exist")
  return TOKENIZERS[kind](path)
