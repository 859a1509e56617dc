"""LocalIndex: a query process's in-memory copy of what it searches in a shared memory.

Dense side: a VectorIndex of every record's tokens. Lexical side: an in-memory SQLite database
with the same FTS5 word and trigram tables as the embedded store, so that one ranking function
(memory.search.rank) serves both stores. Records are named (stream, first snippet index) by the
store and get a local row id here; a record put again (merged) replaces the old one.

With dense=False (the server has a vector index of its own: Redis's query engine) no tokens
are kept here, only the lexical side and each record's time span: the store finds the dense
candidates in Redis and LocalIndex.fuse mixes them with the lexical ones by the same formula
as memory.search.rank.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.index import IndexEntry, VectorIndex
from livesense.memory.lexical import Term, query_terms
from livesense.memory.search import (
    DocFreqs,
    Scope,
    SearchQuery,
    fuse_candidates,
    lexical_candidates,
    rank,
    sql_texts,
)
from livesense.memory.text_tables import (
    TEXT_RECORDS,
    TEXT_TABLES,
    index_text,
    text_columns,
    unindex_text,
)
from livesense.memory.time_window import in_window

Key = tuple[str, int]
"""A record's name: (stream, first snippet index)."""


@dataclass(slots=True)
class Lexical:
    """The lexical side of one query (dense=False): its terms, their idf weights and the
    candidate records with their normalised text."""

    terms: list[Term]
    weights: list[float]
    texts: dict[Key, str]


class LocalIndex:
    """Dense and lexical index of records named (stream, index), in this process's memory."""

    def __init__(self, *, dense: bool = True) -> None:
        self.dense = dense
        self.vectors = VectorIndex(DIM)
        self._span: dict[int, tuple[float, float]] = {}  # dense=False: rid -> (start, end)
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(TEXT_RECORDS + TEXT_TABLES)
        self._lock = threading.RLock()
        self._rid: dict[tuple[str, int], int] = {}
        self._key: dict[int, tuple[str, int]] = {}
        self._by_stream: dict[str, set[int]] = {}
        self._next = 1
        self._doc_freqs = DocFreqs()

    def __len__(self) -> int:
        return len(self._key)

    def __contains__(self, key: object) -> bool:
        return key in self._rid

    def streams(self) -> list[str]:
        return sorted(s for s, ids in self._by_stream.items() if ids)

    def put(
        self, stream: str, index: int, start: float, end: float, tokens: np.ndarray, lex: str
    ) -> None:
        """Add or replace the record (stream, index)."""
        self.put_many(stream, [(index, start, end, tokens, lex)])

    def put_many(self, stream: str, rows: list[tuple[int, float, float, np.ndarray, str]]) -> None:
        """Add or replace records (index, start, end, tokens, lex) of one stream at once."""
        if not rows:
            return
        with self._lock:
            for index, *_ in rows:
                self._drop_locked(stream, index)
            entries = []
            self._db.execute("BEGIN")
            try:
                for index, start, end, tokens, lex in rows:
                    rid = self._next
                    self._next += 1
                    norm, skey = text_columns(lex, stream)
                    self._db.execute(
                        "INSERT INTO records(id, lex, norm, skey) VALUES (?, ?, ?, ?)",
                        (rid, lex, norm, skey),
                    )
                    index_text(self._db, rid, lex, norm, skey)
                    if self.dense:
                        vecs = np.asarray(tokens, np.float32).reshape(-1, DIM)
                        entries.append(IndexEntry(rid, vecs, stream, start, end, norm))
                    else:
                        self._span[rid] = (float(start), float(end))
                    self._rid[(stream, int(index))] = rid
                    self._key[rid] = (stream, int(index))
                    self._by_stream.setdefault(stream, set()).add(rid)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.vectors.add_many(entries)

    def drop(self, stream: str, index: int) -> None:
        """Remove the record (stream, index) if held."""
        with self._lock:
            self._drop_locked(stream, index)

    def drop_stream(self, stream: str) -> None:
        with self._lock:
            for rid in list(self._by_stream.get(stream, ())):
                s, i = self._key[rid]
                self._drop_locked(s, i)

    def _drop_locked(self, stream: str, index: int) -> None:
        rid = self._rid.pop((stream, int(index)), None)
        if rid is None:
            return
        del self._key[rid]
        self._span.pop(rid, None)
        self._by_stream.get(stream, set()).discard(rid)
        self._db.execute("BEGIN")
        if unindex_text(self._db, rid):
            self._db.execute("DELETE FROM records WHERE id = ?", (rid,))
        self._db.execute("COMMIT")
        self.vectors.remove([rid])

    def search(self, q: SearchQuery) -> list[tuple[str, int, float]]:
        """(stream, index, hybrid score) of the best records, best first (dense=True)."""
        with self._lock:
            texts, doc_freqs = self.vectors.texts, self._doc_freqs
            ranked = rank(self._db, self.vectors, q, texts=texts, doc_freqs=doc_freqs)
            return [(*self._key[rid], score) for rid, score in ranked if rid in self._key]

    def lexical(
        self,
        query: str,
        *,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> Lexical:
        """The lexical candidates of a query within the filters, as memory.search.rank finds
        them (dense=False: the filters are checked on the candidates only)."""
        terms = query_terms(query)
        if not terms:
            return Lexical([], [], {})
        with self._lock:
            scope = None
            if stream is not None:  # the stream's records, and their id span, are known here
                held = self._by_stream.get(stream, ())
                ok = {r for r in held if self._passes(r, None, start, end)}
                if not ok:
                    return Lexical(terms, [], {})
                scope = Scope(
                    stream, min(ok), max(ok), lambda ids: [r for r in ids if r in ok],
                    n=len(held), in_stream=lambda ids: [r for r in ids if r in held],
                    whole=start is None and end is None,
                )  # fmt: skip
            elif start is not None or end is not None:

                def keep(ids: list[int]) -> list[int]:
                    return [rid for rid in ids if self._passes(rid, None, start, end)]

                scope = Scope(None, 0, self._next, keep)
            ids, weights = lexical_candidates(
                self._db, terms, len(self._key), scope=scope, doc_freqs=self._doc_freqs
            )
            texts = self._texts(ids)
        return Lexical(terms, weights, texts)

    def _passes(self, rid: int, stream: str | None, start: float | None, end: float | None) -> bool:
        key = self._key.get(rid)
        if key is None or (stream is not None and key[0] != stream):
            return False
        s, e = self._span.get(rid, (0.0, 0.0))
        return in_window(s, e, start, end)

    def _texts(self, rids: set[int] | list[int]) -> dict[Key, str]:
        return {self._key[rid]: norm for rid, norm in self._texts_by_id(rids).items()}

    def _texts_by_id(self, rids: set[int] | list[int]) -> dict[int, str]:
        ids = [rid for rid in rids if rid in self._key]
        return {int(rid): str(norm) for rid, norm in sql_texts(self._db)(ids)}

    def fuse(
        self, lexical: Lexical, dense: Mapping[Key, float], top_k: int
    ) -> list[tuple[str, int, float]]:
        """(stream, index, hybrid score) of the best records, best first, from the dense
        cosines found elsewhere (they must cover every lexical candidate) and the lexical side.
        Ties go to the record indexed here first, as in memory.search.rank."""
        with self._lock:
            texts = {rid: lexical.texts[k] for k in lexical.texts if (rid := self._rid.get(k))}
            texts.update(self._texts_by_id([r for k in dense if (r := self._rid.get(k))]))
            keys = {rid: self._key[rid] for rid in texts}
        cosine = {rid: dense.get(key, 0.0) for rid, key in keys.items()}

        def held(ids: list[int]) -> list[tuple[int, str]]:
            return [(rid, texts[rid]) for rid in ids]

        ranked = fuse_candidates(held, lexical.terms, lexical.weights, cosine, set(texts), top_k)
        return [(*keys[rid], score) for rid, score in ranked]

    def close(self) -> None:
        with self._lock:
            self._db.close()
