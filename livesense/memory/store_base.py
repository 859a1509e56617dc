"""Store: what every rolling memory offers, and the query code they all share.

Two stores implement it: MemoryStore (one directory: SQLite + FTS5 + keyframe files, the
embedded default) and RedisStore (Redis, shared by many processes and machines). Both keep
their streams in tiers (memory.tiers), rank with memory.search.rank, answer with
memory.answer.compose_answer and push new moments to standing queries (memory.watch); what
differs is only where records live and how a process sees other processes' writes.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from livesense.config import MemorySettings
from livesense.engines.text import TextEmbedder, shared_text_embedder
from livesense.errors import LivesenseError, QueryError
from livesense.memory.answer import compose_answer
from livesense.memory.checks import check_range, check_record
from livesense.memory.consolidate import Stored
from livesense.memory.lexical import searchable_text
from livesense.memory.search import SearchQuery, check_query, check_stream
from livesense.memory.summary import StreamSummary
from livesense.memory.tiers import GapMark, Put, StreamTiers, TierPlan, TimelineMoment
from livesense.records import Answer, Hit, SnippetRecord

if TYPE_CHECKING:
    from livesense.memory.watch import WatchHub

ASK_HITS = 5
log = logging.getLogger(__name__)


class Store(ABC):
    """The rolling memory of all streams: add moments; search, ask, list, show them."""

    settings: MemorySettings
    readonly: bool
    hub: WatchHub | None
    _embedder: TextEmbedder | None

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = shared_text_embedder()
        return self._embedder

    # -- writing ---------------------------------------------------------------------------

    def add(self, record: SnippetRecord, keyframe: bytes | None = None) -> None:
        """Store one moment (a no-op if its snippet is already stored): the stream's tiers
        admit it and the store writes the plan they return; then watchers hear of it."""
        stream = check_stream(record.stream)
        tokens = check_record(record)
        index = int(record.index)
        with self._writing(stream) as tiers:
            if tiers.covering(index) is not None:
                return
            ev = record.evidence
            if keyframe:
                ev = dataclasses.replace(ev, keyframe=self._keyframe_ref(stream, index, keyframe))
            item = Stored(
                rid=self._record_id(index),
                record=dataclasses.replace(record, tokens=tokens, evidence=ev),
                last_index=index,
                lex=searchable_text(ev),
            )
            plan = tiers.admit(item)
            if plan is None:
                return
            self._write_plan(plan, keyframe)
        if self.publishes_on_add and self.hub is not None:
            try:
                self.hub.publish(item.record)
            except Exception:  # a failing standing query must not fail the ingest
                log.exception("publishing moment %s/%s to watchers failed", stream, index)

    def flush(self, timeout: float | None = 30.0) -> None:  # noqa: B027 (optional hook)
        """Wait until every moment added so far is stored (writes may be buffered)."""

    def import_stream(
        self, stream: str, items: list[Stored], summary: StreamSummary | None = None
    ) -> None:
        """Store a stream's records as they are (a stream copied from another store, or built
        by running StreamTiers elsewhere); the stream must not be stored here yet."""
        check_stream(stream)
        with self._writing(stream) as tiers:
            if tiers.items():
                raise LivesenseError(f"Stream {stream} is already stored here.")
            self._write_plan(TierPlan(stream, -1, [Put(it) for it in items], summary), None)
            self._imported(stream, items, summary)

    # -- storage primitives: what each store supplies to the write path above ---------------

    publishes_on_add = True  # False: the store tells watchers of new moments another way

    @abstractmethod
    def _writing(self, stream: str) -> AbstractContextManager[StreamTiers]:
        """Hold the stream for writing (refused with one sentence when the store cannot
        write it) and give its tiers, loaded on first use, with the queries they had."""

    @abstractmethod
    def _keyframe_ref(self, stream: str, index: int, data: bytes) -> str:
        """The reference the evidence keeps for snippet `index`'s JPEG keyframe (the store
        may write `data` now or with the plan)."""

    @abstractmethod
    def _record_id(self, index: int) -> int:
        """The id a new record of snippet `index` starts with."""

    @abstractmethod
    def _write_plan(self, plan: TierPlan, keyframe: bytes | None) -> None:
        """Write one plan of the stream's tiers (under `_writing`); `keyframe`: the JPEG of
        the plan's new snippet, if any."""

    @abstractmethod
    def _imported(self, stream: str, items: list[Stored], summary: StreamSummary | None) -> None:
        """Bring the stream's cached tiers in line after an import was written."""

    @abstractmethod
    def delete_stream(self, stream: str) -> dict[str, int]:
        """Delete everything stored of a stream (moments with their vectors and text index,
        keyframes, summary, gap markers); it must not be being ingested. Returns how many
        moments, keyframes and gap markers went."""

    def mark_gap(self, stream: str, start: float, end: float, reason: str) -> None:
        """Remember that the stream had no media from `start` to `end` (stream seconds) and
        why: the timeline shows it as a moment of tier `gap`; search never returns it.
        Marking the same gap again changes nothing; the newest GAPS_KEPT per stream stay."""
        check_stream(stream)
        try:
            mark = GapMark.checked(start, end, reason)
        except ValueError as e:
            raise QueryError(str(e)) from None
        self._mark_gap(stream, mark)

    @abstractmethod
    def _mark_gap(self, stream: str, mark: GapMark) -> None:
        """Store a checked gap marker (idempotent)."""

    @abstractmethod
    def gaps(self, stream: str) -> list[GapMark]:
        """The stream's gap markers in time order."""

    @abstractmethod
    def next_index(self, stream: str) -> int:
        """The snippet index after the last one stored (0 for a new stream): where a live
        stream that was restarted continues."""

    # -- queries ---------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
        top_k: int = 5,
    ) -> list[Hit]:
        """The moments that best match a query, best first (see memory.search for the score)."""
        q = check_query(query)
        if stream is not None:
            check_stream(stream)
        check_range(start, end)
        if not 1 <= int(top_k) <= 1000:
            raise QueryError(f"top_k must be between 1 and 1000, not {top_k}.")
        checked = SearchQuery(q, self.embedder.embed_query(q), stream, start, end, int(top_k))
        self.refresh()
        return self._above_floor(self._search(checked))

    def _above_floor(self, hits: list[Hit]) -> list[Hit]:
        """The hits that score at least `min_score`: below it a moment matches no better
        than an unrelated question's best does, so it is no answer."""
        return [h for h in hits if h.score >= self.settings.min_score]

    @abstractmethod
    def _search(self, q: SearchQuery) -> list[Hit]:
        """Ranked hits for an embedded, checked query (the store is refreshed)."""

    def ask(self, question: str, *, stream: str | None = None) -> Answer:
        """A short answer composed from the best moments' evidence (no language model)."""
        q = check_query(question)
        if stream is not None:
            check_stream(stream)
        checked = SearchQuery(q, self.embedder.embed_query(q), stream, top_k=ASK_HITS)
        self.refresh()
        hits = self._above_floor(self._search(checked))
        return compose_answer(
            q, hits, embedder=self.embedder, qvec=checked.vector, stream=stream,
            neighbour=self._neighbour,
        )  # fmt: skip

    def _neighbour(self, hit: Hit, step: int) -> Hit | None:
        """The stored moment just before (step -1) or after (+1) a hit, when they touch."""
        if step < 0:
            rec = self.get(hit.stream, hit.index - 1) if hit.index > 0 else None
        else:
            rec = self._after(hit.stream, hit.index)
        if rec is None or (step < 0 and rec.end < hit.start - 1e-3):
            return None
        if step > 0 and rec.start > hit.end + 1e-3:
            return None
        return Hit(rec.stream, rec.start, rec.end, 0.0, rec.evidence, rec.index)

    @abstractmethod
    def get(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record that covers snippet `index` of `stream`, if any."""

    @abstractmethod
    def _after(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record that follows the one starting at snippet `index`."""

    @abstractmethod
    def streams(self) -> list[dict[str, Any]]:
        """Per stream: stream, records, start, end (stream seconds) and snippets covered."""

    @abstractmethod
    def timeline(self, stream: str) -> list[TimelineMoment]:
        """The stream's stored moments and gap markers (memory.tiers.with_gaps) in time
        order; they tile the stream without overlaps."""

    @abstractmethod
    def summary(self, stream: str) -> StreamSummary | None:
        """The stream's abstract tier: a running summary of all of it."""

    @abstractmethod
    def recent(self, stream: str, n: int = 10) -> list[SnippetRecord]:
        """The newest `n` stored records of a stream, oldest first."""

    @abstractmethod
    def keyframe(self, stream: str, index: int) -> bytes | None:
        """The JPEG keyframe of snippet `index` (or of the moment covering it), if stored."""

    def keyframe_path(self, stream: str, index: int) -> Path | None:
        """The keyframe as a file, for stores that keep files (None otherwise)."""
        check_stream(stream)
        return None

    @abstractmethod
    def count(self, stream: str | None = None) -> int:
        """Stored records, of one stream or of all."""

    def refresh(self) -> None:  # noqa: B027 (optional hook)
        """Pick up what other processes wrote since the last look (cheap when nothing did)."""

    def health(self) -> dict[str, Any]:
        """The store's own state, for /healthz."""
        return {"store": type(self).__name__}

    # -- lifetime --------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Store what is pending and let go of every resource (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
