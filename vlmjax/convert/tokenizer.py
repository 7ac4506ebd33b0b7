"""open_clip's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) as a `tokenizers` tokenizer.json.

open_clip's SimpleTokenizer: ids 0..255 are the 256 byte symbols, 256..511 the same with
the end-of-word mark `</w>`, then one id per merge (first 49152 - 258 lines after the
header), then start/end of text. Text is NFC-normalised, whitespace-collapsed and
lower-cased, split by CLIP's pattern, byte-mapped and merged. The file ships inside the
open_clip package (`os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")`);
vlmjax reads it from wherever it is and never vendors it. The result is used with
`hf:PATH` (vlmjax.data.tokenizers); the special tokens are named as in Hugging Face's
CLIP tokenizer (`<|startoftext|>`, `<|endoftext|>`) so that loader finds bos and eos.
"""

from __future__ import annotations

import gzip
import os

from vlmjax.errors import ConfigError

MAX_MERGES = 49152 - 256 - 2
SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> list[str]:
  """GPT-2's printable stand-in for each byte, in open_clip's order (printable bytes first)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  rest = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def openclip_tokenizer_json(bpe_path: str, out_path: str) -> str:
  """Writes a tokenizer.json reproducing open_clip's SimpleTokenizer (lower-case cleaning) for `bpe_path`."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  if not os.path.exists(bpe_path):
    raise ConfigError(f"open_clip BPE file {bpe_path!r} does not exist")
  try:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
  except OSError as e:
    raise ConfigError(f"open_clip BPE file {bpe_path!r} is not gzipped text: {e}") from None
  merges = [tuple(line.split()) for line in lines[1:MAX_MERGES + 1] if line.strip()]
  symbols = byte_symbols()
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
  tok = Tokenizer(models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>",
                             continuing_subword_prefix="", unk_token=None, fuse_unk=False))
  tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Strip(), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([BOS, EOS])
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  tok.save(out_path)
  return out_path
