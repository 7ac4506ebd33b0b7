"""A Python stand-in for pycocoevalcap's PTBTokenizer, for machines without Java.

pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines
-lowerCase`) and then drops the tokens in `PUNCTUATIONS`. This module does the
same for the text captions contain, and is tested token for token against the
Java tokenizer where Java is present. Covered: punctuation split off words
(keeping decimals, thousands separators, times, hyphenated and slashed words,
single letters and multi-dot abbreviations such as "b." and "e.g.", and
common titles such as "mr."), clitics ('s 'm 'd 're 've 'll n't), the assimilations cannot / gonna / gotta /
wanna / gimme / lemme, quotes (`` '' ` '), brackets (-lrb- -rrb- -lsb- -rsb-
-lcb- -rcb-, which, lowercased, survive pycocoevalcap's punctuation filter just
as they do with Java), "..." and "--". Not covered: CoreNLP's URL, e-mail,
emoticon and SGML-entity rules, and the extra "." it adds after a
sentence-final abbreviation.
"""

from __future__ import annotations

import re

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, matched case-sensitively as there.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])
BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
ASSIMILATIONS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                 "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me")}
TITLES = ("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "ltd", "co", "corp", "prof", "mt",
          "ave", "blvd", "rd", "dept", "gen", "gov", "sen", "rep", "capt", "col", "lt", "sgt", "fig",
          "jan", "feb", "mar", "apr", "aug", "sep", "sept", "oct", "nov", "dec")

_ALNUM = r"[^\W_]"
_TOKEN = re.compile("|".join([
    r"(?P<ellipsis>\.\.\.+)",
    r"(?P<dashes>--+)",
    r"(?P<abbrev>(?:[^\W\d_]\.){2,}|(?:[^\W\d_]|" + "|".join(TITLES) + r")\.(?=\s|$))",
    r"(?P<number>\d+(?:[.,:/]\d+)+(?:-" + _ALNUM + r"+)*)",
    r"(?P<negated>" + _ALNUM + r"+(?=n't\b))",
    r"(?P<clitic>n't\b|'(?:s|m|d|re|ve|ll)\b)",
    r"(?P<word>" + _ALNUM + r"+(?:[-/&]" + _ALNUM + r"+)*)",
    r"(?P<dquote>\"|``|'')",
    r"(?P<squote>['`])",
    r"(?P<other>\S)",
]), re.IGNORECASE)


def tokenize_line(line: str) -> list[str]:
  """PTB tokens of one line, lowercased, before punctuation removal."""
  out: list[str] = []
  for m in _TOKEN.finditer(line):
    kind, tok = m.lastgroup, m.group()
    opening = (m.start() == 0 or line[m.start() - 1].isspace()
               or (out and out[-1] in ("-LRB-", "-LSB-", "-LCB-", "``", "`")))
    if kind == "ellipsis":
      tok = "..."
    elif kind == "dashes":
      tok = "--"
    elif kind == "word" and tok.lower() in ASSIMILATIONS:
      out.extend(ASSIMILATIONS[tok.lower()])
      continue
    elif kind == "dquote":
      tok = "``" if tok == "``" or (tok == '"' and opening) else "''"
    elif kind == "squote":
      tok = "`" if opening else "'"
    elif kind == "other":
      tok = BRACKETS.get(tok, tok)
    out.append(tok)
  return [t.lower() for t in out]  # CoreNLP lowercases -LRB- too, so pycocoevalcap keeps "-lrb-"


def tokenize(captions: dict) -> dict:
  """{id: [str, ...]} -> {id: [tokenised str, ...]}, like PTBTokenizer + punctuation removal."""
  def clean(caption: str) -> str:
    return " ".join(t for t in tokenize_line(caption.replace("\n", " ")) if t not in PUNCTUATIONS)
  return {k: [clean(c) for c in v] for k, v in captions.items()}
