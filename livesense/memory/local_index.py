"""LocalIndex: a query process's in-memory copy of what it searches in a shared memory.

Dense side: a VectorIndex of every record's tokens. Lexical side: an in-memory SQLite database
with the same FTS5 word and trigram tables as the embedded store, so that one ranking function
(memory.search.rank) serves both stores. Records are named (stream, first snippet index) by the
store and get a local row id here; a record put again (merged) replaces the old one.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.index import IndexEntry, VectorIndex
from livesense.memory.search import rank
from livesense.memory.text_tables import (
    TEXT_RECORDS,
    TEXT_TABLES,
    index_text,
    text_columns,
    unindex_text,
)


class LocalIndex:
    """Dense and lexical index of records named (stream, index), in this process's memory."""

    def __init__(self) -> None:
        self.vectors = VectorIndex(DIM)
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.executescript(TEXT_RECORDS + TEXT_TABLES)
        self._lock = threading.RLock()
        self._rid: dict[tuple[str, int], int] = {}
        self._key: dict[int, tuple[str, int]] = {}
        self._by_stream: dict[str, set[int]] = {}
        self._next = 1

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

    def put_many(
        self, stream: str, rows: list[tuple[int, float, float, np.ndarray, str]]
    ) -> None:
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
                    vecs = np.asarray(tokens, np.float32).reshape(-1, DIM)
                    entries.append(IndexEntry(rid, vecs, stream, start, end))
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
        self._by_stream.get(stream, set()).discard(rid)
        self._db.execute("BEGIN")
        if unindex_text(self._db, rid):
            self._db.execute("DELETE FROM records WHERE id = ?", (rid,))
        self._db.execute("COMMIT")
        self.vectors.remove([rid])

    def search(
        self,
        qvec: np.ndarray,
        query: str,
        *,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
        top_k: int = 5,
    ) -> list[tuple[str, int, float]]:
        """(stream, index, hybrid score) of the best records, best first."""
        with self._lock:
            ranked = rank(
                self._db, self.vectors, qvec, query, stream=stream, start=start, end=end,
                top_k=top_k,
            )
            return [(*self._key[rid], score) for rid, score in ranked if rid in self._key]

    def close(self) -> None:
        with self._lock:
            self._db.close()
