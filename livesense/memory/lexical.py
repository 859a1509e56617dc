"""Text normalisation for the lexical side: what is indexed, what a query asks, what matches.

OCR glues words ("PLATFORM9", "ArrivalsfromRome") and people write codes several ways ("B-52",
"B52"). Every word is indexed as written, split at letter/digit and camelCase boundaries, and
joined without punctuation, so "9", "Rome", "platform 9", "B52" and "B-52" all find it. The
same rules run in SQLite FTS5 (search) and in Python (coverage, standing queries).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from livesense.records import Evidence
from livesense.seen import seen_words

SUBSTRING_CREDIT = 0.6
"""Credit for a query word found only inside a longer glued word ('rome' in 'fromrome',
'q109' in 'gateq109'). Numbers never match inside other numbers ('9' is not in '19')."""

MAX_TERMS = 16
EVENT_MIN = 0.5  # event labels at least this likely are indexed as words ("music")

_RAW = re.compile(r"[^\W_]+(?:[-./:'][^\W_]+)*")  # a word or a code with inner punctuation
_ALNUM = re.compile(r"[^\W_]+")
_GLUE = re.compile(
    r"(?<=[^\W\d_])(?=\d)"  # letter -> digit
    r"|(?<=\d)(?=[^\W\d_])"  # digit -> letter
    r"|(?<=[a-z])(?=[A-Z])"  # camelCase
    r"|(?<=[A-Z])(?=[A-Z][a-z])"  # ACRONYMWord
)

_STOPWORDS = """a an the and or but if then than so of to in on at by for from with without into
    onto over under about above below between up down out off is are was were be been being am
    it its it's this that these those there here i me my we our you your he him his she her
    they them their what which who whom whose when where why how do does did done doing
    has have had having can could would should will shall may might must not no yes any
    anything something someone somebody anyone some all each every very just also too as
    say said says saying tell told show shown showed shows see seen saw mention mentioned
    moment moments time anybody please ever"""
STOPWORDS = frozenset(_STOPWORDS.split())


def fold(text: str) -> str:
    """Drop accents (é -> e) and compatibility forms, keep case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def split_glued(word: str) -> list[str]:
    """'ArrivalsfromRome' -> ['arrivalsfrom', 'rome']; 'PLATFORM9' -> ['platform', '9']."""
    return [p.lower() for p in _GLUE.split(word) if p]


def normalise(text: str) -> str:
    """Lower-case words to index: each as written, its glued parts, and codes joined ('b52')."""
    out: list[str] = []
    for m in _RAW.finditer(fold(text)):
        pieces = _ALNUM.findall(m.group(0))
        lowered = [p.lower() for p in pieces]
        out.extend(lowered)
        split = [s for p in pieces for s in split_glued(p)]
        if split != lowered:
            out.extend(split)
        if len(pieces) > 1:
            out.append("".join(lowered))
    return " ".join(out)


def searchable_text(evidence: Evidence) -> str:
    """The text a moment is found by: transcript, on-screen lines, likely sound events, and
    confidently seen objects and scene labels."""
    lines = [evidence.transcript.strip()]
    lines.extend(line.text.strip() for line in evidence.ocr)
    lines.extend(k for k, v in sorted(evidence.events.items()) if v >= EVENT_MIN)
    lines.extend(seen_words(evidence.objects, evidence.scene))
    return fold("\n".join(x for x in lines if x))


@dataclass(frozen=True, slots=True)
class Term:
    """One query word: its glued parts ('platform', '9') and its joined form ('platform9')."""

    text: str
    parts: tuple[str, ...]
    joined: str
    inner: re.Pattern[str] | None = None  # how it may match inside a longer word, if at all
    word: str = field(init=False, repr=False, compare=False)  # " platform9 "
    phrase: str | None = field(init=False, repr=False, compare=False)  # " platform 9 "

    def __post_init__(self) -> None:
        # found as a word or a phrase of its parts <=> found with spaces around in " norm "
        object.__setattr__(self, "word", f" {self.joined} ")
        phrase = f" {' '.join(self.parts)} " if len(self.parts) > 1 else None
        object.__setattr__(self, "phrase", phrase)

    @property
    def substring(self) -> bool:
        """Words and codes of 3+ characters with a letter may match inside glued OCR text."""
        return self.inner is not None


def _inner_pattern(joined: str) -> re.Pattern[str] | None:
    if len(joined) < 3 or not any(c.isalpha() for c in joined):
        return None
    head = r"(?<!\d)" if joined[0].isdigit() else ""
    tail = r"(?!\d)" if joined[-1].isdigit() else ""
    return re.compile(head + re.escape(joined) + tail)


def query_terms(query: str) -> list[Term]:
    """The content words of a query (stop words and question words dropped), deduplicated."""
    terms: list[Term] = []
    seen: set[str] = set()
    for m in _RAW.finditer(fold(query)):
        pieces = _ALNUM.findall(m.group(0))
        parts = tuple(s for p in pieces for s in split_glued(p))
        joined = "".join(parts)
        if not joined or joined in seen or joined in STOPWORDS:
            continue
        seen.add(joined)
        terms.append(Term(m.group(0), parts, joined, _inner_pattern(joined)))
        if len(terms) >= MAX_TERMS:
            break
    return terms


def stream_key(stream: str) -> str:
    """A stream id hashed to three private-use characters: one token for the word table and
    one trigram for the trigram table, indexed next to the text so that a stream filter is a
    short doclist intersection inside FTS5 (a rare hash clash is removed by the exact filter)."""
    digest = hashlib.blake2b(stream.encode(), digest_size=6).digest()
    return "".join(chr(0xE000 + int.from_bytes(digest[i : i + 2], "big") % 6400) for i in (0, 2, 4))


def _quote(words: Iterable[str]) -> str:
    return '"' + " ".join(words) + '"'  # words are alphanumeric: nothing to escape


def fts_term(term: Term) -> str:
    """FTS5 expression for one term in the word table: a phrase of its parts, or joined."""
    if len(term.parts) > 1:
        return f"({_quote(term.parts)} OR {_quote([term.joined])})"
    return _quote(term.parts)


def fts_all(terms: list[Term]) -> str | None:
    """FTS5 expression matching rows that hold every term as a word."""
    return " AND ".join(fts_term(t) for t in terms) if terms else None


def trigram_term(term: Term) -> str | None:
    """FTS5 expression for the trigram table, for terms that may match inside longer words."""
    return _quote([term.joined]) if term.substring else None


def term_credits(terms: list[Term], norm: str) -> list[float]:
    """Per query term: 1 when found as a word, phrase or joined code, SUBSTRING_CREDIT when
    found only inside a longer word, else 0. `norm` is normalise()'s output: words separated
    by single spaces, so a word or phrase is a substring with a space on either side."""
    padded = f" {norm} "
    out: list[float] = []
    for t in terms:
        if t.word in padded or (t.phrase is not None and t.phrase in padded):
            out.append(1.0)
        elif t.inner is not None and t.joined in norm and t.inner.search(norm):
            out.append(SUBSTRING_CREDIT)
        else:
            out.append(0.0)
    return out


def coverage(credits: list[float], weights: list[float] | None) -> float:
    """The weighted mean of the terms' credits (uniform weights by default), in [0, 1]."""
    w = weights if weights is not None else [1.0] * len(credits)
    total = sum(w)
    return sum(c * x for c, x in zip(credits, w, strict=True)) / total if total > 0 else 0.0


def match_terms(
    terms: list[Term], norm: str, weights: list[float] | None = None
) -> tuple[float, bool]:
    """(coverage in [0, 1], every term found) of query terms in normalised text; coverage is
    the weighted mean of the terms' credits (uniform weights by default)."""
    if not terms:
        return 0.0, False
    credits = term_credits(terms, norm)
    return coverage(credits, weights), all(c > 0 for c in credits)
