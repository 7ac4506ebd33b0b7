"""Tokenizers. Ids: 0 = pad, 1 = bos, 2 = eos; the byte-level tokenizer maps byte b to b + 3."""

from __future__ import annotations

import numpy as np

PAD, BOS, EOS = 0, 1, 2


class ByteTokenizer:
  """UTF-8 bytes as tokens: no vocabulary file, any text, 259 ids."""

  vocab_size = 256 + 3

  def encode(self, text: str, length: int) -> np.ndarray:
    """[bos, bytes..., eos] truncated (eos kept) and zero-padded to `length`."""
    ids = [BOS, *(b + 3 for b in text.encode("utf-8")), EOS]
    if len(ids) > length:
      ids = ids[:length - 1] + [EOS]
    out = np.zeros((length,), np.int32)
    out[:len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    out = bytearray()
    for i in np.asarray(ids).tolist():
      if i == EOS:
        break
      if i >= 3:
        out.append(i - 3)
    return out.decode("utf-8", errors="replace")


TOKENIZERS = {"bytes": ByteTokenizer}


def build(name: str):
  if name not in TOKENIZERS:
    raise ValueError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")
  return TOKENIZERS[name]()
