"""Answers composed from the evidence of the best moments, without a language model.

An answer says when (\"at 0:12–0:14 in stream cam1\"), what was said (the transcript sentence
that best matches the question), what was shown (on-screen text), seen (objects, the scene)
and heard (sound events), or plainly that nothing in memory matches. What lasted is one span:
adjacent moments that show the same object, sound the same or show the same text are told
once ("A cat was on screen from 0:08 to 0:16.", "Music played from 0:24 to 0:36."), as
speech is quoted whole across the moments it runs over. The same hits always give the same
text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from livesense.engines.text import TextEmbedder
from livesense.memory.lexical import match_terms, normalise, query_terms
from livesense.records import Answer, Evidence, Hit
from livesense.seen import SCENE_MIN, STRONG, article, object_phrase

ASK_THRESHOLD = 0.15
"""Hits scoring below this (see memory.search) are not relevant enough to answer from: a
close paraphrase (cosine >= ~0.35) or most of the question's words clear it."""

MORE = 2  # further moments mentioned after the best one...
MORE_RATIO = 0.5  # ...when they score at least this fraction of the best
QUOTE_MAX = 220
OCR_LINES = 4
UTTERANCE_STEPS = 3  # moments an answer's quote may reach back or on to finish a sentence

ASK_FLOOR = 0.06
"""Below ASK_THRESHOLD, the best hit still answers (as "the closest moment") when it scores at
least this and CLEAR times the next moment: search ranked it first by a clear margin."""
CLEAR = 1.5
SPAN_STEPS = 90  # moments a span may reach back or on (3 minutes of 2 s snippets)
SOUNDS = {"music": "Music played", "singing": "Someone sang", "speech": "Someone spoke"}

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
    seen = [object_phrase(o) for o in ev.objects if o.score >= STRONG][:3]
    if seen:
        parts.append(f"{_join(seen)} in view")
    elif ev.faces:
        parts.append(f"{ev.faces} face{'s' if ev.faces > 1 else ''} in view")
    return parts


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return "; ".join(parts[:-1]) + "; and " + parts[-1]


def _sentence(text: str) -> str:
    """End with a full stop unless a quoted sentence already ended it."""
    return text if text.endswith((".\u201d", "!\u201d", "?\u201d", "…\u201d")) else text + "."


@dataclass(frozen=True, slots=True)
class Aspect:
    """One thing a moment shows or sounds, that adjacent moments may share: a seen object
    ("seen", label), a scene label ("scene", label), a sound ("sound", label) or on-screen
    text ("text", its normalised lines). `words` is how it reads in a sentence and what the
    question is compared with."""

    kind: str
    key: str
    words: str
    sure: bool = True  # False for a detection below STRONG: it "may have been" there

    def holds(self, ev: Evidence) -> bool:
        """Whether a moment shows or sounds this too."""
        if self.kind == "seen":
            return any(o.label == self.key for o in ev.objects)
        if self.kind == "scene":
            return ev.scene.get(self.key, 0.0) >= SCENE_MIN
        if self.kind == "sound":
            return ev.events.get(self.key, 0.0) >= 0.5
        return _ocr_key(ev) == self.key

    def sentence(self, start: float, end: float, where: str) -> str:
        span = f"from {format_time(start)} to {format_time(end)}{where}"
        if self.kind == "sound":
            return f"{SOUNDS.get(self.key, 'There was ' + self.key)} {span}."
        if self.kind == "text":
            return f"The screen showed {self.words} {span}."
        if self.kind == "scene":
            return f"The picture showed {self.words} {span}."
        verb = "were" if self.words.split(" ", 1)[0] not in ("a", "an") else "was"
        if not self.sure:
            verb = "may have been"
        return f"{self.words[:1].upper()}{self.words[1:]} {verb} on screen {span}."


def _ocr_key(ev: Evidence) -> str:
    return " | ".join(sorted({normalise(t) for t in ev.ocr_texts() if normalise(t)}))


def aspects(ev: Evidence, quote: bool) -> list[Aspect]:
    """What a moment shows and sounds, beyond its words."""
    out: list[Aspect] = [
        Aspect("seen", o.label, object_phrase(o), o.score >= STRONG) for o in ev.objects
    ]
    top = [k for k, v in sorted(ev.scene.items(), key=lambda kv: -kv[1]) if v >= SCENE_MIN]
    if top:
        out.append(Aspect("scene", top[0], " or ".join(f"{article(k)} {k}" for k in top[:2])))
    for label, p in sorted(ev.events.items(), key=lambda kv: -kv[1]):
        if p >= 0.5 and not (label == "speech" and (quote or ev.transcript.strip())):
            out.append(Aspect("sound", label, f"sound of {label}"))
    key = _ocr_key(ev)
    if key:
        lines = list(dict.fromkeys(_trim(t, 60) for t in ev.ocr_texts() if t.strip()))
        out.append(Aspect("text", key, ", ".join(f"\u201c{t}\u201d" for t in lines[:OCR_LINES])))
    return out


def _relevance(
    question: str, found: list[Aspect], embedder: TextEmbedder | None, qvec: np.ndarray | None
) -> list[float]:
    """How well each aspect answers the question: shared words, and embedding similarity."""
    terms = query_terms(question)
    words = np.array(
        [match_terms(terms, normalise(f"{a.key} {a.words}"))[0] for a in found], np.float32
    )
    if embedder is None or not found:
        return words.tolist()  # type: ignore[no-any-return]
    q = qvec if qvec is not None else embedder.embed([question])[0]
    texts = [a.words if a.kind != "sound" else f"sound of {a.key}" for a in found]
    return (0.5 * words + embedder.embed(texts) @ q).tolist()  # type: ignore[no-any-return]


def span(
    hit: Hit, aspect: Aspect, neighbour: Callable[[Hit, int], Hit | None] | None
) -> tuple[float, float]:
    """The start and end of the run of adjacent moments around `hit` that share `aspect`."""
    start, end = hit.start, hit.end
    if neighbour is None:
        return start, end
    for step in (-1, 1):
        at = hit
        for _ in range(SPAN_STEPS):
            nxt = neighbour(at, step)
            if nxt is None or not aspect.holds(nxt.evidence):
                break
            at = nxt
            start, end = min(start, nxt.start), max(end, nxt.end)
    return start, end


def _lead(
    question: str,
    hit: Hit,
    embedder: TextEmbedder | None,
    qvec: np.ndarray | None,
) -> Aspect | None:
    """The aspect that answers the question, or None when the words said do it better."""
    quote = best_sentence(question, hit.evidence.transcript, embedder=embedder, qvec=qvec)
    found = aspects(hit.evidence, bool(quote))
    if not found:
        return None
    scores = _relevance(question, found, embedder, qvec)
    best = int(np.argmax(scores))
    if quote:
        said = _relevance(question, [Aspect("speech", quote, quote)], embedder, qvec)[0]
        if said >= scores[best]:
            return None
    return found[best]


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

    With `neighbour`, quoted speech is completed from the adjacent moments (whole_utterance)
    and what was seen or heard is told over the whole run of moments that share it (span).
    """
    relevant = [h for h in hits if h.score >= threshold]
    closest = ""
    if not relevant and hits and hits[0].score >= ASK_FLOOR:
        others = [h for h in hits[1:] if (h.stream, h.index) != (hits[0].stream, hits[0].index)]
        if not others or hits[0].score >= CLEAR * others[0].score:
            relevant, closest = [hits[0]], "The closest moment: "
    if not relevant:
        where = f" of stream {stream}" if stream else ""
        return Answer(f"Nothing in memory{where} matches \u201c{_trim(question, 120)}\u201d.", [])
    several = len({h.stream for h in relevant}) > 1
    covered: list[tuple[str, float, float]] = []
    sentences_out: list[str] = []
    for n, hit in enumerate(relevant):
        if n and (len(sentences_out) > MORE or hit.score < MORE_RATIO * relevant[0].score):
            break
        if any(s == hit.stream and a <= hit.start < b for s, a, b in covered):
            continue
        where = f" in stream {hit.stream}" if several else ""
        lead = _lead(question, hit, embedder, qvec)
        if lead is not None:
            start, end = span(hit, lead, neighbour)
            text = lead.sentence(start, end, where)
            covered.append((hit.stream, start, end))
        else:
            full = whole_utterance(hit, neighbour) if neighbour is not None else hit
            parts = _describe(question, full, embedder, qvec)
            what = (
                _join(parts)
                if parts
                else "this moment matches, but no words or text were recorded"
            )
            text = _sentence(
                f"At {format_when(full)}, {what}" if not n
                else f"Also at {format_when(full)}: {_join(parts[:2]) or what}"
            )
            covered.append((hit.stream, full.start, full.end))
        if n == 0 and closest:
            text = closest + text[:1].lower() + text[1:] if lead is None else closest + text
        sentences_out.append(text)
    return Answer(" ".join(sentences_out), relevant)
