"""Answers composed from the evidence of the best moments, without a language model.

An answer says when (\"at 0:12–0:14 in stream cam1\"), what was said (the transcript sentence
that best matches the question), what was shown (on-screen text) and what was heard (sound
events), or plainly that nothing in memory matches. The same hits always give the same text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from livesense.engines.text import TextEmbedder
from livesense.memory.lexical import match_terms, normalise, query_terms
from livesense.records import Answer, Hit

ASK_THRESHOLD = 0.15
"""Hits scoring below this (see memory.search) are not relevant enough to answer from: a
close paraphrase (cosine >= ~0.35) or most of the question's words clear it."""

MORE = 2  # further moments mentioned after the best one...
MORE_RATIO = 0.5  # ...when they score at least this fraction of the best
QUOTE_MAX = 220
OCR_LINES = 4
UTTERANCE_STEPS = 3  # moments an answer's quote may reach back or on to finish a sentence

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def format_time(t: float) -> str:
    """Seconds on the stream clock as m:ss (h:mm:ss past an hour)."""
    s = max(0, int(round(t)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_when(hit: Hit) -> str:
    """'0:12–0:14 in stream cam1'."""
    return f"{format_time(hit.start)}–{format_time(hit.end)} in stream {hit.stream}"


def _trim(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def sentences(transcript: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(transcript.strip()) if s.strip()]


def best_sentence(
    question: str,
    transcript: str,
    *,
    embedder: TextEmbedder | None = None,
    qvec: np.ndarray | None = None,
) -> str | None:
    """The sentence of a transcript that best matches the question (word overlap, and
    embedding similarity when an embedder is given); ties go to the earlier sentence."""
    cands = sentences(transcript)
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0]
    terms = query_terms(question)
    overlap = np.array([match_terms(terms, normalise(s))[0] for s in cands], np.float32)
    score = overlap
    if embedder is not None:
        q = qvec if qvec is not None else embedder.embed([question])[0]
        score = 0.5 * overlap + 0.5 * (embedder.embed(cands) @ q)
    return cands[int(np.argmax(score))]  # argmax takes the first of equal scores


def _ends_sentence(text: str) -> bool:
    return text.rstrip().endswith((".", "!", "?"))


def whole_utterance(hit: Hit, neighbour: Callable[[Hit, int], Hit | None]) -> Hit:
    """The hit widened to the neighbouring moments its speech runs into.

    Snippets cut speech every 2 s, so "The train to Rome leaves" and "from platform 9 at 7:30."
    land in two moments; an answer quotes the whole sentence and spans both. `neighbour(hit,
    -1 | +1)` gives the adjacent stored moment of the same stream, or None.
    """
    text, start, end = hit.evidence.transcript.strip(), hit.start, hit.end
    if not text:
        return hit
    first = last = hit
    for _ in range(UTTERANCE_STEPS):  # back while the moment before runs into this one
        prev = neighbour(first, -1)
        if prev is None or not prev.evidence.transcript or _ends_sentence(prev.evidence.transcript):
            break
        text, start, first = f"{prev.evidence.transcript.strip()} {text}", prev.start, prev
    for _ in range(UTTERANCE_STEPS):  # on while the speech has not ended
        if _ends_sentence(last.evidence.transcript):
            break
        nxt = neighbour(last, +1)
        if nxt is None or not nxt.evidence.transcript:
            break
        text, end, last = f"{text} {nxt.evidence.transcript.strip()}", nxt.end, nxt
    if text == hit.evidence.transcript.strip():
        return hit
    return replace(hit, start=start, end=end, evidence=replace(hit.evidence, transcript=text))


def _describe(
    question: str, hit: Hit, embedder: TextEmbedder | None, qvec: np.ndarray | None
) -> list[str]:
    ev = hit.evidence
    parts: list[str] = []
    quote = best_sentence(question, ev.transcript, embedder=embedder, qvec=qvec)
    if quote:
        parts.append(f"someone said \u201c{_trim(quote, QUOTE_MAX)}\u201d")
    lines: list[str] = []
    for text in ev.ocr_texts():
        t = _trim(text, 60)
        if t and t not in lines:
            lines.append(t)
    if lines:
        shown = ", ".join(f"\u201c{t}\u201d" for t in lines[:OCR_LINES])
        parts.append(f"the screen showed {shown}")
    heard = [k for k, v in sorted(ev.events.items(), key=lambda kv: -kv[1]) if v >= 0.5]
    heard = [k for k in heard if not (k == "speech" and quote)]
    if heard:
        parts.append("there was " + " and ".join(heard))
    if ev.faces:
        parts.append(f"{ev.faces} face{'s' if ev.faces > 1 else ''} in view")
    return parts


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return "; ".join(parts[:-1]) + "; and " + parts[-1]


def _sentence(text: str) -> str:
    """End with a full stop unless a quoted sentence already ended it."""
    return text if text.endswith((".\u201d", "!\u201d", "?\u201d", "…\u201d")) else text + "."


def compose_answer(
    question: str,
    hits: list[Hit],
    *,
    embedder: TextEmbedder | None = None,
    qvec: np.ndarray | None = None,
    threshold: float = ASK_THRESHOLD,
    stream: str | None = None,
    neighbour: Callable[[Hit, int], Hit | None] | None = None,
) -> Answer:
    """A short answer from the best hits (ranked, best first), or a plain 'nothing matches'.

    With `neighbour`, quoted speech is completed from the adjacent moments (whole_utterance).
    """
    relevant = [h for h in hits if h.score >= threshold]
    if not relevant:
        where = f" of stream {stream}" if stream else ""
        return Answer(f"Nothing in memory{where} matches \u201c{_trim(question, 120)}\u201d.", [])
    best = relevant[0]
    if neighbour is not None:
        best = whole_utterance(best, neighbour)
    parts = _describe(question, best, embedder, qvec)
    what = _join(parts) if parts else "this moment matches, but no words or text were recorded"
    text = _sentence(f"At {format_when(best)}, {what}")
    others = [
        h
        for h in relevant[1:]
        if h.score >= MORE_RATIO * best.score
        and not (h.stream == best.stream and best.start <= h.start < best.end)
    ][:MORE]
    for hit in others:
        more = _describe(question, hit, embedder, qvec)
        if more:
            text += " " + _sentence(f"Also at {format_when(hit)}: {_join(more[:2])}")
    return Answer(text, relevant)
