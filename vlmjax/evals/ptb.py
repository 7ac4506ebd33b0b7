"""A Python stand-in for pycocoevalcap's PTBTokenizer, for machines without Java.

pycocoevalcap runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`) on all
captions at once, one per line, and then drops the tokens in `PUNCTUATIONS`. This module mimics
that lexer: at each position every rule below is tried and the longest match wins (a rule's
trailing context counts towards its length but is not consumed), ties going to the earlier
rule, as in the JFlex scanner CoreNLP generates. Captions are lexed as one text, so a rule that
looks past the end of a line sees the next caption, as Java's does. It is tested token for
token against the Java tokenizer where Java is present, on hand-written cases and on fuzzed
caption-like text.

Covered: words (any Unicode letters, with combining marks and soft hyphens), words joined by
"." "!" "?" ("dog.a"), hyphenated and slashed words ("t-shirt", "w/o", "and/or"), clitics
('s 'm 'd 're 've 'll n't, straight or curly), apostrophe words (o'clock, ma'am, rock 'n'
roll, 'em, '90s, y', l'amour, ...), the assimilations cannot / gonna / gotta / wanna / gimme /
lemme / 'tis / 'twas, numbers (signed, decimals, thousands, times, dates, fractions with the
space made non-breaking, 5'10), abbreviations with their CoreNLP lists (mr. st. no. 5, u.s.,
single letters), repeated "?!" and "...", dashes, quotes, brackets (-lrb- ... which, lowercased,
survive pycocoevalcap's punctuation filter just as they do with Java), currency and fraction
symbols, smileys, URLs, e-mail addresses, @names, #tags, simple SGML tags, phone numbers.

Knowingly not covered (rare in captions): SGML entities other than &amp; &lt; &gt; &quot; &apos;
&nbsp; (e.g. &eacute; inside a word); SGML tags with unusual attribute syntax; CoreNLP's special
acronyms such as "Sino-U.S"; control characters (captioning.tokenize removes them first); which
rarer characters CoreNLP 3.4.1 (old Unicode tables) treats as letters, keeps as symbols or drops: here
letters are str.isalpha(), combining marks join words, the symbol blocks in `_SYMBOLS` are kept and
anything else unknown, including everything beyond U+FFFF such as emoji, is dropped; and the extra "."
CoreNLP adds after a sentence-final abbreviation ("Inc." -> "Inc." "."), which pycocoevalcap's filter
removes anyway, so only tokenize_line (one line, no neighbours) lacks it.
"""

from __future__ import annotations

import re
import unicodedata

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS, matched case-sensitively as there.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])
BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}


def _char_class(pred) -> str:
  """The body of a regex character class holding the BMP characters for which pred is true."""
  out, start = [], None
  for cp in range(0x10001):
    ok = cp < 0x10000 and not 0xD800 <= cp < 0xE000 and pred(chr(cp))
    if ok and start is None:
      start = cp
    elif not ok and start is not None:
      out.append(re.escape(chr(start)) + ("-" + re.escape(chr(cp - 1)) if cp - 1 > start else ""))
      start = None
  return "".join(out)


_LETTERS = _char_class(str.isalpha)
L = f"[{_LETTERS}]"                                        # Java's Character.isLetter, roughly
WL = f"[{_LETTERS}{_char_class(lambda c: unicodedata.category(c) in ('Mn', 'Mc'))}\u00ad]"
D = f"[{_char_class(lambda c: unicodedata.category(c) == 'Nd')}]"
LD = f"[{_LETTERS}{D[1:-1]}]"
SPNL = "[ \t\u00a0\u2000-\u200a\u3000\n\r\u2028\u2029\x0b\x0c\x85]"  # the lexer's spaces and newlines
APOS = "(?:['\u0092\u2019]|&apos;)"
APOSX = "(?:['`\u0091\u0092\u2018\u2019\u201b]|&apos;)"  # also seen inside words
ACRO = "[A-Za-z](?:\\.[A-Za-z])+"
WORD = f"{WL}(?:{WL}|{D})*(?:[.!?]{WL}(?:{WL}|{D})*)*"
REDAUX = f"{APOS}(?:[msdMSD]|(?i:re|ve|ll))"
SREDAUX = f"(?i:n){APOSX}(?i:t)"
NUM = f"[-+]?(?:{D}+(?:[.:,\u00ad\u066b\u066c]{D}+)*|(?:[.:,\u066b\u066c]{D}+)+)"
THING_PART = f"(?:[dDoOlL]{APOSX}{LD})?{LD}+"
QUOTE_CHARS = "`\u2018\u2019\u201a\u201b\u201c\u201d\u0091-\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb"
FILE_EXTENSIONS = ("bat|bmp|c|class|cgi|cpp|dll|docx?|exe|gif|gz|h|html?|jar|java|jpe?g|mov|mp3|pdf|php|pl"
                   "|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
NOT_URL_END = " \t\n\f\r\"<>|.!?(){},-"
# CoreNLP's abbreviation lists. ABBREV1 (months, days, states, companies, ...) also claims the two
# characters after it, so "etc.n't" is "etc." + "n't"; an upper-case first letter is required
# where Java's character class is case-sensitive.
ABBREV1 = ("(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri|ala|ariz"
           "|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt"
           "|wisc?|wyo|inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq"
           "|jr|sr|bros|ed\\.d|ph\\.d|blvd|rd|esq|etc|al|seq|bldg)"
           "|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)")
ABBREVS = (ABBREV1 + "|(?i:dept|invt|elec|natl|m[ft]g|ft|ph|mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt"
           "|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc"
           "|spc|supts?|det|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc|vs?|alex|wm|jos|cie|a\\.k\\.a|cf"
           "|treas)|[A-Za-z](?:\\.[A-Za-z])*")
# Capitalised words after which an acronym's period also ends the sentence ("B. The" -> "B" ".").
SENTENCE_STARTS = ("(?:A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)|H(?i:e|er|ere|owever)"
                   "|I(?i:f|n|t)|L(?i:ast)|M(?i:any|ore|r\\.|s\\.)|N(?i:ow)|O(?i:nce|ne|ther|ur)"
                   "|S(?i:he|ince|o|ome|uch)|T(?i:hat|he|heir|hen|here|hese|hey|his)|W(?i:e|hen|hile|hat)"
                   "|Y(?i:et|ou))")
# Standalone symbols the lexer keeps as tokens (others, e.g. emoji, it drops).
_SYMBOLS = ("\u00a1\u00a5-\u00a9\u00ac\u00ae-\u00b4\u00b6-\u00b9\u00bf\u00d7\u00f7\u2016\u2017"
            "\u201a\u201e-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u2070\u2074-\u207e\u2080-\u208e"
            "\u20a4\u2100-\u214f\u2155-\u215e\u2190-\u2bff\u3001\u3002\u3012\u30fb\uff01-\uff0f"
            "\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\uffe0\uffe1\uffe5\uffe6")

# (action, pattern), in CoreNLP's order; a trailing context goes in a (?=(?P<ctx>...)) lookahead.
RULES = [
    # programming languages, then assimilations split as "can not", "gon na", "'t is"
    ("keep", "(?i:c\\+\\+|[cf]#)"),
    ("split3", "(?i:cannot|'twas)"), ("split2", "(?i:'tis|gonna|gotta|lemme|gimme|wanna)"),
    ("sgml", "<(?:[!?][A-Za-z-][^>\n]*|/[A-Za-z][A-Za-z0-9_:.-]*|[A-Za-z][A-Za-z0-9_:.-]*"
             "(?: +[A-Za-z][A-Za-z0-9_:.-]*(?: *= *(?:\"[^\"\n]*\"|'[^'\n]*'))?)* */?)>"),
    ("dash", "&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"),
    ("amp", "&amp;"), ("keep", "&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"),
    # words, stopping before a clitic ('s, n't)
    ("word", f"{WORD}(?=(?P<ctx>{REDAUX}))"),
    ("word", f"[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*(?=(?P<ctx>{SREDAUX}))"),
    ("word", WORD),
    # words with an apostrophe kept whole
    ("keep", f"{APOS}(?i:n){APOS}?|[lLdDjJ]{APOS}|(?i:dunkin|somethin|ol){APOS}|{APOS}(?i:em|till?|cause)"),
    ("keep", f"[A-HJ-XZn]{APOSX}{L}{{2,}}|{APOS}[2-9]0(?i:s)|{L}+[aeiouyAEIOUY]{APOSX}[aeiouA-Z]{L}*"),
    ("keep", f"(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|cont'd\\.?|o{APOSX}o)"),
    ("keep", f"(?i:y){APOS}(?=(?P<ctx>{L}))"),
    # URLs, e-mail addresses, @names and #tags
    ("keep", f"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^{NOT_URL_END}]"),
    ("keep", f"(?:www\\.(?:[^ \t\n\f\r\"<>|.!?(){{}},]+\\.)+[a-zA-Z]{{2,4}}"
             f"|(?:[^ \t\n\f\r\"`'<>|.!?(){{}}$\\x2c-\\x5f]+\\.)+(?i:com|net|org|edu))"
             f"(?:/[^ \t\n\f\r\"<>|()]+[^{NOT_URL_END}])?"),
    ("keep", "(?:<|&lt;)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00a0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00a0]+\\.)*"
             "[^ \t\n\f\r\"<>|(){}.\u00a0]+(?:>|&gt;)?"),
    ("keep", f"@[a-zA-Z_][a-zA-Z_0-9]*|#{WL}+"),
    # clitics
    ("quote", f"{REDAUX}(?=(?P<ctx>[^A-Za-z]))"), ("quote", f"{SREDAUX}(?=(?P<ctx>[^A-Za-z]))"),
    # dates, numbers, super/subscripts, fractions (a space inside becomes non-breaking)
    ("keep", f"{D}{{1,2}}[-/]{D}{{1,2}}[-/]{D}{{2,4}}"),
    ("word", NUM),
    ("keep", "[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    ("nbsp", f"(?:{D}{{1,4}}[- \u00a0])?{D}{{1,4}}(?:\\\\?/|\u2044){D}{{1,4}}"),
    ("frac", "[\u00bc\u00bd\u00be\u2153-\u215e]"),
    ("amp", f"(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\\.D\\.s|pro-|anti-|S(?:&amp;|&)P-500|S(?:&amp;|&)Ls"
            f"|Cap{APOS}n|c{APOS}est)"),
    ("keep", "[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),  # a/b, w/o
    ("keep", "[A-Z]*\\$|#"),
    ("currency", "[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]"),
    # abbreviations: "no." before a number, acronyms before a sentence start, the lists above
    ("keep", f"(?i:ca|figs?|nos?|prop|art|pp|op)\\.(?=(?P<ctx>{SPNL}?{D}))"),
    ("acronym", f"[A-Za-z](?:\\.[A-Za-z])*\\.(?=(?P<ctx>{SPNL}+{SENTENCE_STARTS}{SPNL}))"),
    ("keep", f"(?:{ABBREV1})\\.(?=(?P<ctx>(?s:..)))"), ("keep", f"(?:{ABBREVS})\\."),
    ("keep", f"{APOS}[0-9][0-9](?=(?P<ctx>{SPNL}))"),  # '90, 5'10
    ("keep", f"{LD}+(?:\\.{LD}+)*\\.(?i:{FILE_EXTENSIONS})(?=(?P<ctx>{SPNL}|[.?!,]))"),
    ("word", f"{WORD}\\.(?=(?P<ctx>[,;:]))"),
    ("phone", "(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[- \u00a0])?[0-9]{2,4}[- \u00a0])"
              "[0-9]{3,4}[- \u00a0]?[0-9]{3,5}"),
    # punctuation and symbols, smileys
    ("lquote", "(?:\"|&quot;)(?=(?P<ctx>[A-Za-z0-9$]))"), ("quote", "\"|&quot;"),
    ("keep", "[+%&~^|\\\\\u2030\u2031]"), ("lt", "<|&lt;"), ("gt", ">|&gt;"), ("keep", "<<|>>"),
    ("bracket", "[][(){}]"),
    ("paren", "[<>]?[:;=][-o*']?[()DPdpO\\\\{@|[\\]](?=(?P<ctx>[^A-Za-z0-9]))"),
    ("paren", "[-^x=~<>']_[-^x=~<>']|\\([-^x=~<>'][_.]?[-^x=~<>']\\)"),
    ("hyphens", "-+"), ("ellipsis", "\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]"),
    ("keep", "@+|#+|_+|\\*+|(?:\\\\\\*){1,3}|[,;:]|[?!]+|=|/"),
    ("keep", "[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]"),
    # hyphenated words and numbers, words with d'/o'/l', AT&T-style capitals
    ("word", f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:{ACRO}\\.|[A-Za-z0-9\u00ad]+))+(?:\\.(?=(?P<ctx>[,;:])))?"),
    ("keep", f"{THING_PART}(?:[-_\u058a\u2010\u2011]{THING_PART})*(?:\\.(?=(?P<ctx>[,;:])))?"),
    ("amp", "[A-Z]+(?:(?:&amp;|[+&])[A-Z]+)+(?:\\.(?=(?P<ctx>[,;:])))?"),
    # remaining quotes, symbols, spaces
    ("lquote", f"'(?=(?P<ctx>[A-Za-z][^ \t\n\r\u00a0]))"),
    ("quote", REDAUX), ("quote", f"''|[{QUOTE_CHARS}]{{1,2}}|{APOS}"),
    ("keep", f"[{_SYMBOLS}]"),
    ("space", f"\\x00|{SPNL}+|[\u200b\u200e\u200f\ufeff]|&nbsp;"),
]
# All rules in one regex, each inside an optional lookahead, so that one match() call reports
# every rule's match at a position (group r<k>, and c<k> for its trailing context).
_ALL = re.compile("".join(f"(?:(?=(?P<r{k}>{pattern.replace('(?P<ctx>', f'(?P<c{k}>')}))|)"
                          for k, (_, pattern) in enumerate(RULES)))
_GROUPS = [(action, _ALL.groupindex[f"r{k}"], _ALL.groupindex.get(f"c{k}"))
           for k, (action, _) in enumerate(RULES)]
# Fast path: spaces, and letters followed by a space, which no other rule can match longer.
_PLAIN = re.compile(f"{SPNL}+|{L}+(?={SPNL})")
_ASSIMILATIONS = re.compile("(?i:cannot|gonna|gotta|lemme|gimme|wanna)")
_LATEX_QUOTES = str.maketrans({"\u0091": "`", "\u2018": "`", "\u201b": "`", "\u2039": "`", "\u0092": "'",
                               "\u2019": "'", "\u203a": "'", "\u0093": "``", "\u201c": "``", "\u00ab": "``",
                               "\u0094": "''", "\u201d": "''", "\u00bb": "''"})
_CURRENCY = {"\u00a2": "cents", "\u00a3": "#", "\u00a4": "$", "\u0080": "$", "\u20a0": "$", "\u20ac": "$"}
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _quote(tok: str, left: bool) -> str:
  tok = tok.replace("&apos;", "'").replace("&quot;", '"')
  tok = tok.replace("'", "`" if left else "'").replace('"', "``" if left else "''")
  return tok.translate(_LATEX_QUOTES)


# What each action makes of the matched text (None: no token).
_ACTIONS = {
    "keep": lambda t: t, "word": lambda t: t.replace("\u00ad", ""), "amp": lambda t: t.replace("&amp;", "&"),
    "dash": lambda t: "--", "ellipsis": lambda t: "...", "hyphens": lambda t: "--" if 3 <= len(t) <= 4 else t,
    "quote": lambda t: _quote(t, False), "lquote": lambda t: _quote(t, True),
    "nbsp": lambda t: t.replace(" ", "\u00a0"), "sgml": lambda t: t.replace(" ", "\u00a0"),
    "frac": lambda t: _FRACTIONS.get(t, t), "currency": lambda t: _CURRENCY.get(t, t),
    "phone": lambda t: t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"),
    "paren": lambda t: t.replace("(", "-LRB-").replace(")", "-RRB-"), "bracket": lambda t: BRACKETS[t],
    "lt": lambda t: "<", "gt": lambda t: ">", "space": lambda t: None,
    "split2": lambda t: t, "split3": lambda t: t, "acronym": lambda t: t,
}


def _lex(text: str):
  """Yields (start offset, token) over text, before lowercasing and punctuation removal."""
  i, n = 0, len(text)
  while i < n:
    m = _PLAIN.match(text, i)
    if m and not _ASSIMILATIONS.fullmatch(m.group()):
      if not text[i].isspace():
        yield i, m.group()
      i = m.end()
      continue
    spans = _ALL.match(text, i).regs
    best, best_len = None, 0
    for action, g, c in _GROUPS:
      end = spans[g][1]
      if end >= 0:
        length = end - i + (spans[c][1] - spans[c][0] if c else 0)
        if length > best_len:
          best, best_len = (action, end), length
    if best is None:  # untokenizable (Java drops it, as with `-untokenizable firstDelete`)
      i += 1
      continue
    action, end = best
    end -= {"split3": 3, "split2": 2}.get(action, 0)
    if action == "acronym" and end - i == 2:  # "B." before "The": the letter, then "."
      end -= 1
    tok = _ACTIONS[action](text[i:end])
    if tok is not None:
      yield i, tok
    i = end


def tokenize_line(line: str) -> list[str]:
  """PTB tokens of one line, lowercased, before punctuation removal."""
  return [t.lower() for _, t in _lex(line + "\n")]  # Java lowercases -LRB- too


def tokenize(captions: dict) -> dict:
  """{id: [str, ...]} -> {id: [tokenised str, ...]}, like PTBTokenizer + punctuation removal."""
  lines = [c.replace("\n", " ") for v in captions.values() for c in v]
  text = "\n".join(lines) + "\n"
  starts = [0]
  for line in lines:
    starts.append(starts[-1] + len(line) + 1)
  out: list[list[str]] = [[] for _ in lines]
  row = 0
  for pos, tok in _lex(text):
    while pos >= starts[row + 1]:
      row += 1
    tok = tok.lower()
    if tok not in PUNCTUATIONS:
      out[row].append(tok)
  it = iter(" ".join(t) for t in out)
  return {k: [next(it) for _ in v] for k, v in captions.items()}
