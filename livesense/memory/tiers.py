"""Tiered rolling memory of one stream (after Flash-VStream's STAR memory, for snippet records).

Four tiers, all with fixed budgets, so that the work per new snippet and the memory per stream
stay flat however long a stream runs:

- recent: the last `recent` snippets at full detail;
- key: up to `key` moments kept at full detail for their salience (speech, new on-screen
  text, sound events, scene changes, being returned by a query), the least salient leaving
  first; salience halves every `key_half_life` seconds of stream time, so fresh moments win
  over equally salient old ones;
- consolidated: at most `consolidated` records, the rest of the stream; nothing is merged
  while a stream fits its budgets, then each time the tier is over budget the adjacent pair
  with the smallest Ward cost (n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2 of their pooled
  tokens) merges: weighted clustering along the time line, so alike neighbours merge first and
  long spans grow only where little changes. Merged records keep their time span and
  summarised evidence, and their text stays searchable (compact_text) within the stream's
  text budget: once the consolidated tier holds `text_chars` characters of searchable text,
  each merge keeps the text of the merged pair less the excess (distinct lines first, then
  distinct words, the rest dropped and counted in the summary);
- abstract: a StreamSummary of the whole stream, updated per snippet.

Records tile the stream: each snippet index is covered by exactly one record, so a record is
named by its first snippet index. `StreamTiers.admit` turns one new record into a TierPlan, a
short ordered list of operations that a store applies atomically (SQLite transaction, Redis
script). The same code drives every store.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from livesense.config import MemorySettings
from livesense.memory.consolidate import Stored, merge_group
from livesense.memory.index import pool
from livesense.memory.lexical import STOPWORDS, normalise
from livesense.memory.summary import StreamSummary
from livesense.records import Evidence, SeenObject, SnippetRecord
from livesense.seen import seen_text

RECENT, KEY, CONSOLIDATED = "recent", "key", "consolidated"
TIERS = (RECENT, KEY, CONSOLIDATED)
GAP = "gap"  # the timeline's tier for media that never came (not a tier of records)
GAPS_KEPT = 1000  # gap markers kept per stream, the oldest leaving first

QUERIED_BONUS = 2.0  # salience a moment gains by being returned by a query
MIN_TEXT = 200  # characters of searchable text a merged record keeps at least


@dataclass(frozen=True, slots=True)
class TierBudget:
    """Per-stream budgets, from MemorySettings."""

    recent: int
    key: int
    consolidated: int
    key_threshold: float
    key_half_life: float
    text_chars: int

    @classmethod
    def from_settings(cls, s: MemorySettings) -> TierBudget:
        """Budgets within `max_records_per_stream`: the consolidated tier gets what the recent
        and key tiers leave, and small bounds shrink those two to a quarter each."""
        total = s.max_records_per_stream
        recent, key = s.recent, s.key_moments
        if recent + key + 2 > total:
            recent = max(1, min(recent, total // 4))
            key = min(key, total // 4)
        return cls(
            recent=recent,
            key=key,
            consolidated=max(2, total - recent - key),
            key_threshold=s.key_threshold,
            key_half_life=s.key_half_life,
            text_chars=s.text_chars,
        )

    @property
    def total(self) -> int:
        return self.recent + self.key + self.consolidated


# -- operations of a plan --------------------------------------------------------------------


@dataclass(slots=True)
class Put:
    """Store a whole record (a new snippet, or a merge standing for the records dropped)."""

    item: Stored


@dataclass(slots=True)
class Retier:
    """Move the record starting at `index` to another tier (content unchanged)."""

    index: int
    tier: str


@dataclass(slots=True)
class Drop:
    """Remove the record covering snippets `index`..`last` (it was merged into another)."""

    index: int
    last: int
    keyframe: str | None = None  # its keyframe, when no record uses it any more


Op = Put | Retier | Drop


@dataclass(slots=True)
class TierPlan:
    """What one admitted snippet changes, in order; `summary` is the stream's abstract tier."""

    stream: str
    index: int
    ops: list[Op] = field(default_factory=list)
    summary: StreamSummary | None = None

    @property
    def dropped_keyframes(self) -> list[str]:
        return [op.keyframe for op in self.ops if isinstance(op, Drop) and op.keyframe]


@dataclass(frozen=True, slots=True)
class TimelineMoment:
    """One stored moment as the timeline shows it."""

    start: float
    end: float
    tier: str
    summary: str
    index: int = 0
    count: int = 1
    objects: tuple[SeenObject, ...] = ()

    @classmethod
    def of(cls, item: Stored) -> TimelineMoment:
        r = item.record
        objects = tuple(r.evidence.objects)
        return cls(r.start, r.end, r.tier, describe(r), r.index, r.count, objects)

    def to_json(self) -> dict[str, Any]:
        """The public shape (part of the CLI contract)."""
        return {
            "start": round(float(self.start), 3),
            "end": round(float(self.end), 3),
            "tier": self.tier,
            "summary": self.summary,
            "objects": [o.to_json() for o in self.objects],
        }


@dataclass(frozen=True, slots=True)
class GapMark:
    """Stream time with no media (the source dropped, or its timestamps jumped), and why."""

    start: float
    end: float
    reason: str

    @classmethod
    def checked(cls, start: float, end: float, reason: str) -> GapMark:
        """A marker with its times rounded to the millisecond (so the same gap marked twice
        is one marker) and a one-line reason."""
        s, e = float(start), float(end)
        if not (math.isfinite(s) and math.isfinite(e)) or s < 0.0 or e < s:
            raise ValueError(f"A gap needs 0 <= start <= end, not {start}..{end}.")
        why = " ".join(str(reason).split())[:300] or "media was missing"
        return cls(round(s, 3), round(e, 3), why)


def with_gaps(moments: list[TimelineMoment], gaps: Iterable[GapMark]) -> list[TimelineMoment]:
    """The timeline with its gap markers: each gap is one moment of tier `gap` (overlapping
    markers joined) that also fills the hole around it where no moment was stored; a stored
    moment that a gap cuts into keeps the part outside the gap, so moments still follow one
    another in time without overlapping."""
    merged: list[list[Any]] = []  # [start, end, reasons]
    for g in sorted(gaps, key=lambda g: (g.start, g.end)):
        if merged and g.start <= merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], g.end)
            if g.reason not in last[2]:
                last[2].append(g.reason)
        else:
            merged.append([g.start, g.end, [g.reason]])
    if not merged:
        return moments
    starts = [m.start for m in moments]
    holes: list[list[Any]] = []
    for first, ge, why in merged:  # a stored moment wholly inside a gap stays whole: the
        gs = first  # gap goes round it
        i = bisect.bisect_left(starts, gs)
        while i < len(moments) and moments[i].start < ge:
            m = moments[i]
            if m.end <= ge and m.start < m.end:
                if m.start > gs:
                    holes.append([gs, m.start, why])
                gs = m.end
            i += 1
        if ge > gs or first == ge:
            holes.append([gs, ge, why])
    ends = [ge for _, ge, _ in holes]
    pieces: list[TimelineMoment] = []
    for m in moments:
        start = m.start
        j = bisect.bisect_right(ends, start)
        while j < len(holes) and holes[j][0] < m.end:
            gs, ge, _ = holes[j]
            if gs > start:
                pieces.append(replace(m, start=start, end=gs))
            start = max(start, ge)
            j += 1
        if start < m.end:
            pieces.append(replace(m, start=start))
    merged = holes
    marks = [
        TimelineMoment(gs, ge, GAP, "gap: " + "; ".join(why), index=-1, count=0)
        for gs, ge, why in merged
    ]
    out = sorted([*pieces, *marks], key=lambda m: (m.start, m.end, m.tier != GAP))
    for i, m in enumerate(out):  # a gap fills the hole next to it
        if m.tier != GAP:
            continue
        start = out[i - 1].end if i > 0 and out[i - 1].end < m.start else m.start
        end = out[i + 1].start if i + 1 < len(out) and out[i + 1].start > m.end else m.end
        out[i] = replace(m, start=start, end=end)
    return out


# -- salience and text -----------------------------------------------------------------------


def key_salience(ev: Evidence, previous_ocr: Iterable[str] = ()) -> float:
    """How much a moment deserves full detail: speech, on-screen text not in the previous
    snippet, sound events other than speech, a scene change, faces coming into view."""
    seen = {normalise(t) for t in previous_ocr}
    new_text = [line for line in ev.ocr if normalise(line.text) not in seen]
    events = [v for k, v in ev.events.items() if k != "speech" and v >= 0.5]
    return (
        (1.0 if ev.transcript.strip() else 0.0)
        + (1.0 + 0.25 * min(len(new_text) - 1, 4) if new_text else 0.0)
        + (max(events) if events else 0.0)
        + (1.0 if ev.scene_change else 0.0)
    )


def compact_text(texts: list[str], limit: int) -> tuple[str, int]:
    """Searchable text of merged records within `limit` characters: distinct lines first
    (in time order), then distinct words of the lines that did not fit; stop words are left
    out. Returns the text and how many distinct words were dropped for lack of room."""
    lines: list[str] = []
    seen_lines: set[str] = set()
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line and line.lower() not in seen_lines:
                seen_lines.add(line.lower())
                lines.append(line)
    kept: list[str] = []
    size = 0
    rest: list[str] = []
    for line in lines:
        if not rest and size + len(line) + 1 <= limit:
            kept.append(line)
            size += len(line) + 1
        else:
            rest.append(line)
    if not rest:
        return "\n".join(kept), 0
    have = set(normalise(" ".join(kept)).split())
    extra: list[str] = []
    dropped = 0
    for line in rest:
        for word in line.split():
            words = normalise(word).split()
            if not words or all(w in have or w in STOPWORDS for w in words):
                continue
            have.update(words)
            if size + len(word) + 1 <= limit:
                extra.append(word)
                size += len(word) + 1
            else:
                dropped += 1
    if extra:
        kept.append(" ".join(extra))
    return "\n".join(kept), dropped


def describe(record: SnippetRecord, limit: int = 160) -> str:
    """A one-line summary of a stored moment for the timeline."""
    ev = record.evidence
    parts: list[str] = []
    said = " ".join(ev.transcript.split())
    if said:
        said = said if len(said) <= 90 else said[:89].rstrip() + "…"
        parts.append(f"said \u201c{said}\u201d")
    shown = [" ".join(t.split()) for t in ev.ocr_texts()[:3] if t.strip()]
    if shown:
        parts.append("shown " + ", ".join(f"\u201c{t[:40]}\u201d" for t in shown))
    heard = [k for k, v in sorted(ev.events.items(), key=lambda kv: -kv[1]) if v >= 0.5]
    heard = [k for k in heard if not (k == "speech" and said)]
    if heard:
        parts.append("heard " + " and ".join(heard))
    seen = seen_text(ev.objects, {})
    if seen:
        parts.append(f"seen {seen}")
    elif ev.faces:
        parts.append(f"{ev.faces} face{'s' if ev.faces > 1 else ''}")
    if ev.scene_change and not parts:
        parts.append("scene change")
    text = "; ".join(parts) if parts else "nothing notable"
    if record.count > 1:
        text = f"{record.count} snippets: {text}"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# -- the per-stream state --------------------------------------------------------------------


class StreamTiers:
    """The tiers of one stream as its writer sees them: every stored record (bounded by the
    budgets) and the abstract summary. Not thread-safe: one writer per stream."""

    def __init__(
        self,
        stream: str,
        budget: TierBudget,
        items: Iterable[Stored] = (),
        summary: StreamSummary | None = None,
    ) -> None:
        self.stream = stream
        self.budget = budget
        self.summary = summary or StreamSummary(stream)
        ordered = sorted(items, key=lambda it: it.record.index)
        self.recent: deque[Stored] = deque(it for it in ordered if it.record.tier == RECENT)
        self.older: list[Stored] = [it for it in ordered if it.record.tier != RECENT]
        if self.recent and self.older and self.older[-1].record.index > self.recent[0].record.index:
            # recent records older than consolidated ones (a crash between two plans): fold
            self.older = sorted([*self.older, *self.recent], key=lambda it: it.record.index)
            self.recent = deque()
            for it in self.older:
                if it.record.tier == RECENT:
                    it.record.tier = CONSOLIDATED
        self._queried: set[int] = set()
        self._rows: dict[int, tuple[np.ndarray, int, int]] = {}
        self._costs: dict[tuple[int, int, int, int], float] = {}

    # -- lookups -------------------------------------------------------------------------

    def items(self) -> list[Stored]:
        """Every record, in time order."""
        return [*self.older, *self.recent]

    def __len__(self) -> int:
        return len(self.older) + len(self.recent)

    @property
    def last_index(self) -> int:
        """The last snippet index covered (-1 when empty)."""
        last = self.recent[-1] if self.recent else (self.older[-1] if self.older else None)
        return -1 if last is None else last.last_index

    def covering(self, index: int) -> Stored | None:
        """The record that covers snippet `index`, if any."""
        if index > self.last_index:
            return None
        items = self.items()
        pos = bisect.bisect_right([it.record.index for it in items], index) - 1
        if pos >= 0 and items[pos].last_index >= index:
            return items[pos]
        return None

    def counts(self) -> dict[str, int]:
        """Records per tier."""
        out = {RECENT: len(self.recent), KEY: 0, CONSOLIDATED: 0}
        for it in self.older:
            out[it.record.tier] = out.get(it.record.tier, 0) + 1
        return out

    def mark_queried(self, indices: Iterable[int]) -> None:
        """Moments returned by a query: recent ones are kept as key moments when they leave
        the recent tier; key ones gain salience."""
        wanted = set(indices)
        if not wanted:
            return
        first_recent = self.recent[0].record.index if self.recent else math.inf
        for it in self.older:
            if it.record.tier == KEY and it.record.index in wanted:
                it.salience += QUERIED_BONUS
        self._queried.update(i for i in wanted if i >= first_recent)

    # -- admitting a record --------------------------------------------------------------

    def admit(self, item: Stored) -> TierPlan | None:
        """Take a new snippet's record; None when its snippet is already covered."""
        record = item.record
        plan = TierPlan(self.stream, record.index)
        if self.covering(record.index) is not None or self.covering(item.last_index) is not None:
            return None
        previous = self.recent[-1].record.evidence.ocr_texts() if self.recent else []
        item.salience = key_salience(record.evidence, previous)
        record.tier = RECENT
        if record.index > self.last_index:
            self.recent.append(item)
        elif self.recent and record.index > self.recent[0].record.index:
            pos = bisect.bisect([it.record.index for it in self.recent], record.index)
            self.recent.insert(pos, item)
        else:  # a hole filled among older records (a resumed ingest): it joins them
            record.tier = CONSOLIDATED
            bisect.insort(self.older, item, key=lambda it: it.record.index)
        plan.ops.append(Put(item))
        self.summary.update(record)
        plan.summary = self.summary
        while len(self.recent) > self.budget.recent:
            self._retire(self.recent.popleft(), plan)
        self._shrink(plan)
        return plan

    def _retire(self, item: Stored, plan: TierPlan) -> None:
        """A record leaves the recent tier: to the key tier if salient, else consolidated."""
        b = self.budget
        idx = item.record.index
        queried = idx in self._queried
        self._queried.discard(idx)
        if queried:
            item.salience += QUERIED_BONUS
        self.older.append(item)
        if b.key > 0 and item.salience >= b.key_threshold:
            item.record.tier = KEY
            plan.ops.append(Retier(idx, KEY))
            keys = [it for it in self.older if it.record.tier == KEY]
            if len(keys) > b.key:
                weakest = min(keys, key=self._priority)
                weakest.record.tier = CONSOLIDATED
                plan.ops.append(Retier(weakest.record.index, CONSOLIDATED))
            return
        item.record.tier = CONSOLIDATED
        plan.ops.append(Retier(idx, CONSOLIDATED))

    def _priority(self, item: Stored) -> float:
        """log(salience) + start * ln 2 / half-life: the order of decayed saliences."""
        return math.log(max(item.salience, 1e-6)) + item.record.start * math.log(2) / max(
            self.budget.key_half_life, 1e-6
        )

    def _row(self, item: Stored) -> tuple[np.ndarray, int, int]:
        """(pooled tokens, snippets, text size) of a record, computed once per record."""
        row = self._rows.get(item.record.index)
        if row is None:
            row = (pool(item.record.tokens), int(item.record.count), len(item.lex) + 1)
            self._rows[item.record.index] = row
        return row

    def _pair_cost(self, a: Stored, b: Stored) -> float:
        """Ward cost of merging two neighbours, cached while both stand."""
        key = (a.record.index, a.record.count, b.record.index, b.record.count)
        cost = self._costs.get(key)
        if cost is None:
            va, na, _ = self._row(a)
            vb, nb, _ = self._row(b)
            cost = self._costs[key] = na * nb / (na + nb) * 2.0 * (1.0 - float(va @ vb))
        return cost

    def _shrink(self, plan: TierPlan) -> None:
        """While the consolidated tier is over budget, merge its cheapest adjacent pair (the
        smallest Ward cost; text is kept whole while it fits in its budget)."""
        if len(self._costs) > 8 * (len(self.older) + 8):
            self._costs.clear()  # entries of records merged away
        while True:
            older = self.older
            if sum(it.record.tier == CONSOLIDATED for it in older) <= self.budget.consolidated:
                return
            best, best_cost = -1, 0.0
            for i in range(len(older) - 1):
                a, b = older[i], older[i + 1]
                if a.record.tier == CONSOLIDATED and b.record.tier == CONSOLIDATED:
                    cost = self._pair_cost(a, b)
                    if best < 0 or cost < best_cost:
                        best, best_cost = i, cost
            if best < 0:
                return
            self._merge(best, plan, older)

    def _merge(self, pos: int, plan: TierPlan, older: list[Stored]) -> None:
        """Merge older[pos] and older[pos + 1] into one consolidated record, shaving what the
        consolidated tier holds beyond its text budget off the merged text."""
        a, b = older[pos], older[pos + 1]
        merged = merge_group([a, b], lex=False)
        text = sum(self._row(it)[2] for it in older if it.record.tier == CONSOLIDATED)
        room = self._row(a)[2] + self._row(b)[2] - max(0, text - self.budget.text_chars)
        merged.lex, dropped = compact_text([a.lex, b.lex], max(MIN_TEXT, room))
        merged.record.tier = CONSOLIDATED
        if dropped:
            self.summary.dropped_words += dropped
        keep = merged.record.evidence.keyframe
        for it in (a, b):
            ref = it.record.evidence.keyframe
            gone = ref if ref and ref != keep else None
            plan.ops.append(Drop(it.record.index, it.last_index, gone))
            self._rows.pop(it.record.index, None)
        plan.ops.append(Put(merged))
        self.older[pos : pos + 2] = [merged]
