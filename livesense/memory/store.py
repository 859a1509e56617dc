"""MemoryStore: the embedded rolling memory in a directory (SQLite in WAL mode + keyframes).

Layout: DIR/memory.db holds records (evidence as JSON, tokens as float16), two FTS5 tables
(words and trigrams, memory.text_tables) and a meta table (with each stream's summary, the
abstract tier); DIR/keyframes/<stream>/<index>.jpg holds keyframes. Streams are kept in tiers
(memory.tiers): each new snippet is one TierPlan applied in one transaction.
One process writes (it holds DIR/writer.lock); any number of others read. Every add is its own
short transaction, so a killed writer loses at most the moment in flight. Readers open the
database read-only and catch up incrementally: new rows have larger ids, and rows removed by
merging are logged with the `generation` they were removed in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from livesense.config import MemorySettings
from livesense.engines.text import DIM, TextEmbedder
from livesense.errors import LivesenseError, NotFoundError
from livesense.memory.consolidate import Stored
from livesense.memory.evidence_codec import evidence_from_json, evidence_to_json
from livesense.memory.index import IndexEntry, VectorIndex
from livesense.memory.search import DocFreqs, SearchQuery, check_stream, rank
from livesense.memory.store_base import Store
from livesense.memory.summary import StreamSummary
from livesense.memory.text_tables import TEXT_TABLES, index_text, text_columns, unindex_text
from livesense.memory.tiers import (
    GAPS_KEPT,
    Drop,
    GapMark,
    Put,
    Retier,
    StreamTiers,
    TierBudget,
    TierPlan,
    TimelineMoment,
    with_gaps,
)
from livesense.records import Hit, SnippetRecord

if TYPE_CHECKING:
    from livesense.memory.watch import WatchHub

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REMOVED_LOG_GENERATIONS = 256  # consolidations a reader may fall behind before a full reload
BUSY_TIMEOUT_MS = 5000

__all__ = ["MemoryStore", "check_stream", "evidence_from_json", "evidence_to_json"]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    idx INTEGER NOT NULL,
    last_idx INTEGER NOT NULL,
    start_t REAL NOT NULL,
    end_t REAL NOT NULL,
    wall REAL,
    count INTEGER NOT NULL,
    tier TEXT NOT NULL,
    salience REAL NOT NULL,
    evidence TEXT NOT NULL,
    tokens BLOB NOT NULL,
    ntok INTEGER NOT NULL,
    modalities TEXT NOT NULL,
    times TEXT NOT NULL,
    clip BLOB,
    clip_dim INTEGER,
    lex TEXT NOT NULL,
    norm TEXT NOT NULL,
    skey TEXT NOT NULL,
    UNIQUE(stream, idx)
);
CREATE INDEX IF NOT EXISTS records_time ON records(stream, start_t);
{TEXT_TABLES}
CREATE TABLE IF NOT EXISTS removed(gen INTEGER NOT NULL, id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gaps(
    stream TEXT NOT NULL,
    start_t REAL NOT NULL,
    end_t REAL NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY(stream, start_t, end_t)
);
CREATE INDEX IF NOT EXISTS removed_gen ON removed(gen);
INSERT OR IGNORE INTO meta(key, value)
    VALUES ('schema', '{SCHEMA_VERSION}'), ('generation', '0'), ('pruned_below', '0');
"""

_COLS = (
    "id, stream, idx, last_idx, start_t, end_t, wall, count, tier, salience, evidence, "
    "tokens, ntok, modalities, times, clip, clip_dim, lex"
)


def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float16).tobytes()


def _unblob(b: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(b, np.float16).reshape(-1, dim).astype(np.float32)


class WriterBusyError(LivesenseError):
    """The memory directory is being written by another process (it holds writer.lock)."""

    status = 409


class MemoryStore(Store):
    """The rolling memory of all streams in one directory: add, search, ask, list."""

    def __init__(
        self,
        root: Path,
        settings: MemorySettings | None = None,
        *,
        readonly: bool = False,
        embedder: TextEmbedder | None = None,
        hub: WatchHub | None = None,
    ) -> None:
        self.root = Path(root)
        self.settings = settings or MemorySettings()
        self.readonly = readonly
        self.hub = hub
        self.db_path = self.root / "memory.db"
        self.keyframes = self.root / "keyframes"
        self.lists_path = self.root / "vectors.faiss"
        self._embedder = embedder
        self._index = VectorIndex(DIM, lists_path=None if readonly else self.lists_path)
        self._doc_freqs = DocFreqs()
        self._local = threading.local()
        # read connections by the thread that owns them; those of finished threads are closed
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one add at a time
        self._refresh_lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._budget = TierBudget.from_settings(self.settings)
        self._tiers: dict[str, StreamTiers] = {}
        self._queried: dict[str, set[int]] = {}  # hits of queries, for the next add
        self._queried_lock = threading.Lock()
        self._generation = 0
        self._max_id = 0
        self._lockfile: Any = None
        self._writer: sqlite3.Connection | None = None
        self._closed = False
        if readonly:
            if not self.db_path.is_file():
                raise NotFoundError(f"There is no livesense memory in {self.root} yet.")
        else:
            self._open_writer()
        try:
            self._reload()
        except LivesenseError:
            self.close()
            raise
        except sqlite3.DatabaseError as e:
            self.close()
            raise LivesenseError(f"The memory in {self.root} cannot be read: {e}.") from None

    # -- connections ---------------------------------------------------------------------

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            uri = self.db_path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5
            )
        else:
            conn = sqlite3.connect(
                self.db_path, isolation_level=None, check_same_thread=False, timeout=5
            )
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _open_writer(self) -> None:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        # A memory holds private speech and images: only its owner may read it (as tokens.db).
        self.keyframes.mkdir(mode=0o700, exist_ok=True)
        os.close(os.open(self.db_path, os.O_CREAT | os.O_RDWR, 0o600))
        for path, mode in ((self.keyframes, 0o700), (self.db_path, 0o600)):
            with contextlib.suppress(OSError):  # a memory made earlier, or owned by another user
                os.chmod(path, mode)
        lockfile = open(self.root / "writer.lock", "a+")  # noqa: SIM115 (held while open)
        try:
            fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lockfile.close()
            raise WriterBusyError(
                f"Another process (an ingest, serve or run) is already writing to the memory "
                f"in {self.root}; stop it first, or ingest through one process: 'livesense run "
                "SOURCE' ingests while it serves, and a running server takes new streams with "
                "POST /v1/streams. Reading it (search, ask, timeline, serve) works meanwhile."
            ) from None
        self._lockfile = lockfile
        try:
            conn = self._connect(readonly=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={64 << 20}")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.DatabaseError as e:
            self._release_lock()
            raise LivesenseError(f"The memory in {self.root} cannot be opened: {e}.") from None
        self._writer = conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL: never blocked by the writer)."""
        if self._closed:
            raise LivesenseError("This memory has been closed.")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(readonly=True)
            self._local.conn = conn
            with self._conns_lock:
                alive = []
                for thread, old in self._conns:
                    if thread.is_alive():
                        alive.append((thread, old))
                    else:  # a finished worker thread (FastAPI recycles them): free its handles
                        with contextlib.suppress(sqlite3.Error):
                            old.close()
                alive.append((threading.current_thread(), conn))
                self._conns = alive
        return conn

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer
        if conn is None:
            raise LivesenseError("This memory is open read-only; it cannot be written.")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- loading -------------------------------------------------------------------------

    def _meta(self, conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _load_rows(self, conn: sqlite3.Connection, after: int) -> None:
        """Add rows with id > after to the dense index, 8192 at a time."""
        cur = conn.execute(
            "SELECT id, stream, start_t, end_t, ntok, tokens, norm FROM records WHERE id > ? "
            "ORDER BY id",
            (after,),
        )
        while True:
            batch = cur.fetchmany(8192)
            if not batch:
                break
            self._max_id = max(self._max_id, int(batch[-1][0]))
            rows = [r for r in batch if r[0] not in self._index]
            if not rows:
                continue
            self._index.add_packed(
                np.array([r[0] for r in rows], np.int64),
                [r[1] for r in rows],
                np.array([r[2] for r in rows], np.float64),
                np.array([r[3] for r in rows], np.float64),
                np.array([r[4] for r in rows], np.int64),
                np.frombuffer(b"".join(r[5] for r in rows), np.float16).reshape(-1, DIM),
                texts=[r[6] for r in rows],
                fit=False,
            )

    def _reload(self) -> None:
        """Load every stored record into the dense index."""
        conn = self._writer or self._reader()
        with self._refresh_lock:
            conn.execute("BEGIN")
            try:
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                    raise NotFoundError(f"There is no livesense memory in {self.root} yet.")
                version = self._meta(conn, "schema")
                if version != SCHEMA_VERSION:
                    raise LivesenseError(
                        f"The memory in {self.root} is in format {version}; this livesense "
                        f"reads format {SCHEMA_VERSION}: ingest into a new directory."
                    )
                self._index.clear()
                self._max_id = 0
                records, tokens = conn.execute(
                    "SELECT count(*), coalesce(sum(ntok), 0) FROM records"
                ).fetchone()
                self._index.reserve(int(records) + 1024, int(tokens) + 4096)
                self._generation = self._meta(conn, "generation")
                self._counts = {
                    s: int(n)
                    for s, n in conn.execute("SELECT stream, count(*) FROM records GROUP BY stream")
                }
                self._load_rows(conn, 0)
            finally:
                conn.execute("COMMIT")
            # saved lists are used as they are (refitted in the background if due); else fit now
            loaded = self._index.load_lists(self.lists_path)
            self._index.maybe_fit(wait=not loaded)

    def refresh(self) -> None:
        """Pick up what another process wrote since the last look (cheap when nothing did)."""
        if not self.readonly or self._closed:
            return
        conn = self._reader()
        with self._refresh_lock:
            conn.execute("BEGIN")
            try:
                gen = self._meta(conn, "generation")
                if gen != self._generation:
                    if self._generation + 1 < self._meta(conn, "pruned_below"):
                        full = True
                    else:
                        full = False
                        gone = conn.execute(
                            "SELECT id FROM removed WHERE gen > ?", (self._generation,)
                        ).fetchall()
                        self._index.remove(int(r[0]) for r in gone)
                        self._generation = gen
                else:
                    full = False
                if not full:
                    self._load_rows(conn, self._max_id)
                    self._index.maybe_fit()
            finally:
                conn.execute("COMMIT")
        if full:
            self._reload()

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, stream: str) -> Iterator[StreamTiers]:
        with self._write_lock:
            conn = self._writer
            if conn is None:
                closed = "has been closed" if self._closed else "is open read-only"
                raise LivesenseError(f"This memory {closed}; it cannot be written.")
            tiers = self._tiers_of(conn, stream)
            with self._queried_lock:
                tiers.mark_queried(self._queried.pop(stream, ()))
            yield tiers

    def _keyframe_ref(self, stream: str, index: int, data: bytes) -> str:
        return self._write_keyframe(stream, index, data)

    def _record_id(self, index: int) -> int:
        return 0  # the row id, set when the row is inserted

    def _write_plan(self, plan: TierPlan, keyframe: bytes | None) -> None:
        """Apply the plan in one transaction (its keyframe file is written already)."""
        assert self._writer is not None
        try:
            self._apply(self._writer, plan)
        except BaseException:
            self._tiers.pop(plan.stream, None)  # reloaded from what was committed
            raise

    def _imported(self, stream: str, items: list[Stored], summary: StreamSummary | None) -> None:
        self._tiers.pop(stream, None)  # loaded again from what was committed

    def delete_stream(self, stream: str) -> dict[str, int]:
        """Delete the stream's moments (rows, text index, vectors), summary, gap markers and
        keyframe files in one transaction; readers drop them at their next look."""
        check_stream(stream)
        with self._write_lock:
            conn = self._writer
            if conn is None:
                closed = "has been closed" if self._closed else "is open read-only"
                raise LivesenseError(f"This memory {closed}; it cannot be written.")
            with self._transaction() as c:
                ids = [
                    int(r[0])
                    for r in c.execute("SELECT id FROM records WHERE stream = ?", (stream,))
                ]
                for rid in ids:
                    self._delete(c, rid)
                gaps = c.execute("DELETE FROM gaps WHERE stream = ?", (stream,)).rowcount
                c.execute("DELETE FROM meta WHERE key = ?", (f"summary:{stream}",))
                gen = self._generation
                if ids:
                    gen = self._meta(c, "generation") + 1
                    c.executemany(
                        "INSERT INTO removed(gen, id) VALUES (?, ?)", [(gen, rid) for rid in ids]
                    )
                    c.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES ('generation', ?)",
                        (str(gen),),
                    )
            self._generation = gen
            self._index.remove(ids)
            self._tiers.pop(stream, None)
            self._counts.pop(stream, None)
            with self._queried_lock:
                self._queried.pop(stream, None)
        keyframes = 0
        folder = self.keyframes / stream
        if folder.is_dir():
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    path.unlink()
                    keyframes += path.suffix == ".jpg"
            with contextlib.suppress(OSError):
                folder.rmdir()
        return {"moments": len(ids), "keyframes": keyframes, "gaps": max(0, gaps)}

    def _mark_gap(self, stream: str, mark: GapMark) -> None:
        """Store a gap marker in its own table (the same gap again is ignored); the oldest
        leave beyond GAPS_KEPT per stream."""
        with self._write_lock:
            if self._writer is None:
                closed = "has been closed" if self._closed else "is open read-only"
                raise LivesenseError(f"This memory {closed}; it cannot be written.")
            with self._transaction() as c:
                added = c.execute(
                    "INSERT OR IGNORE INTO gaps(stream, start_t, end_t, reason) "
                    "VALUES (?, ?, ?, ?)",
                    (stream, mark.start, mark.end, mark.reason),
                ).rowcount
                if added:
                    c.execute(
                        "DELETE FROM gaps WHERE stream = ? AND rowid NOT IN (SELECT rowid FROM "
                        "gaps WHERE stream = ? ORDER BY start_t DESC, end_t DESC LIMIT ?)",
                        (stream, stream, GAPS_KEPT),
                    )

    def gaps(self, stream: str) -> list[GapMark]:
        """The stream's gap markers in time order."""
        check_stream(stream)
        try:
            rows = self._reader().execute(
                "SELECT start_t, end_t, reason FROM gaps WHERE stream = ? ORDER BY start_t, end_t",
                (stream,),
            )
            return [GapMark(float(a), float(b), str(r)) for a, b, r in rows]
        except sqlite3.OperationalError as e:  # a memory written before gaps were kept
            if "no such table" in str(e):
                return []
            raise

    def _tiers_of(self, conn: sqlite3.Connection, stream: str) -> StreamTiers:
        """The stream's tiers, loaded from the database on first use."""
        tiers = self._tiers.get(stream)
        if tiers is None:
            rows = conn.execute(
                f"SELECT {_COLS} FROM records WHERE stream = ? ORDER BY idx", (stream,)
            ).fetchall()
            raw = conn.execute(
                "SELECT value FROM meta WHERE key = ?", (f"summary:{stream}",)
            ).fetchone()
            summary = StreamSummary.from_json(raw[0]) if raw else None
            items = [self._stored(r) for r in rows]
            tiers = self._tiers[stream] = StreamTiers(stream, self._budget, items, summary)
        return tiers

    def _apply(self, conn: sqlite3.Connection, plan: TierPlan) -> None:
        """Apply one plan in one transaction, then the dense index and the keyframe files."""
        stream = plan.stream
        put: dict[int, tuple[Stored, str]] = {}  # row id -> (record, normalised text), for
        # the ones still stored at the end
        removed: list[int] = []
        with self._transaction() as c:
            for op in plan.ops:
                if isinstance(op, Put):
                    op.item.rid, norm = self._insert(c, op.item)
                    put[op.item.rid] = (op.item, norm)
                elif isinstance(op, Retier):
                    c.execute(
                        "UPDATE records SET tier = ? WHERE stream = ? AND idx = ?",
                        (op.tier, stream, op.index),
                    )
                elif isinstance(op, Drop):
                    row = c.execute(
                        "SELECT id FROM records WHERE stream = ? AND idx = ?", (stream, op.index)
                    ).fetchone()
                    if row is not None:
                        self._delete(c, int(row[0]))
                        if put.pop(int(row[0]), None) is None:
                            removed.append(int(row[0]))
            gen = self._generation
            if removed:
                gen = self._meta(c, "generation") + 1
                c.executemany(
                    "INSERT INTO removed(gen, id) VALUES (?, ?)", [(gen, rid) for rid in removed]
                )
                floor = gen - REMOVED_LOG_GENERATIONS
                if floor > 0:
                    c.execute("DELETE FROM removed WHERE gen < ?", (floor,))
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('generation', ?), "
                    "('pruned_below', ?)",
                    (str(gen), str(max(0, floor))),
                )
            if plan.summary is not None:
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (f"summary:{stream}", plan.summary.to_json()),
                )
        self._generation = gen
        if removed:
            self._index.remove(removed)
        self._index.add_many(
            [
                IndexEntry(rid, it.record.tokens, stream, it.record.start, it.record.end, norm)
                for rid, (it, norm) in put.items()
            ]
        )
        if put:
            self._max_id = max(self._max_id, *put)
        self._counts[stream] = self._counts.get(stream, 0) + len(put) - len(removed)
        for ref in plan.dropped_keyframes:
            with contextlib.suppress(OSError):
                (self.keyframes / ref).unlink()

    def _write_keyframe(self, stream: str, index: int, data: bytes) -> str:
        folder = self.keyframes / stream
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{index}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / f"{index}.jpg")
        return f"{stream}/{index}.jpg"

    def _insert(self, conn: sqlite3.Connection, s: Stored) -> tuple[int, str]:
        """Insert a record and index its text; returns (row id, normalised text)."""
        r = s.record
        norm, skey = text_columns(s.lex, r.stream)
        clip = None if r.clip_tokens is None else np.asarray(r.clip_tokens, np.float32)
        cur = conn.execute(
            "INSERT INTO records(stream, idx, last_idx, start_t, end_t, wall, count, tier, "
            "salience, evidence, tokens, ntok, modalities, times, clip, clip_dim, lex, norm, skey) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.stream,
                int(r.index),
                int(s.last_index),
                float(r.start),
                float(r.end),
                None if r.wall is None else float(r.wall),
                int(r.count),
                r.tier,
                float(s.salience),
                evidence_to_json(r.evidence),
                _blob(r.tokens),
                len(r.tokens),
                json.dumps(list(r.token_modalities)),
                json.dumps([float(t) for t in r.token_times]),
                None if clip is None else _blob(clip.reshape(-1, clip.shape[-1])),
                None if clip is None else int(clip.shape[-1]),
                s.lex,
                norm,
                skey,
            ),
        )
        rid = int(cur.lastrowid or 0)
        index_text(conn, rid, s.lex, norm, skey)
        return rid, norm

    def _delete(self, conn: sqlite3.Connection, rid: int) -> None:
        if unindex_text(conn, rid):
            conn.execute("DELETE FROM records WHERE id = ?", (rid,))

    def _stored(self, row: tuple[Any, ...]) -> Stored:
        (rid, stream, idx, last_idx, start, end, wall, count, tier, sal, ev, tokens, _ntok,
         mods, times, clip, clip_dim, lex) = row  # fmt: skip
        record = SnippetRecord(
            stream=stream,
            index=int(idx),
            start=float(start),
            end=float(end),
            tokens=_unblob(tokens, DIM),
            token_modalities=list(json.loads(mods)),
            token_times=[float(t) for t in json.loads(times)],
            evidence=evidence_from_json(ev),
            wall=wall,
            clip_tokens=None if clip is None else _unblob(clip, int(clip_dim)),
            count=int(count),
            tier=tier,
        )
        return Stored(int(rid), record, int(last_idx), lex, float(sal))

    # -- reading -------------------------------------------------------------------------

    def get(self, stream: str, index: int) -> SnippetRecord | None:
        """The stored record that covers snippet `index` of `stream`, if any."""
        check_stream(stream)
        self.refresh()
        sql = f"SELECT {_COLS} FROM records WHERE stream = ? AND idx <= ? ORDER BY idx DESC LIMIT 1"
        row = self._reader().execute(sql, (stream, int(index))).fetchone()
        if row is None or int(row[3]) < int(index):
            return None
        return self._stored(row).record

    def _search(self, q: SearchQuery) -> list[Hit]:
        conn = self._reader()
        ranked = rank(conn, self._index, q, texts=self._index.texts, doc_freqs=self._doc_freqs)
        if not ranked:
            return []
        ids = [rid for rid, _ in ranked]
        marks = ",".join("?" * len(ids))
        rows = {
            int(r[0]): r
            for r in conn.execute(
                f"SELECT id, stream, idx, start_t, end_t, evidence FROM records "
                f"WHERE id IN ({marks})",
                ids,
            )
        }
        hits: list[Hit] = []
        for rid, score in ranked:
            r = rows.get(rid)
            if r is not None:
                hits.append(
                    Hit(
                        stream=r[1],
                        start=float(r[3]),
                        end=float(r[4]),
                        score=score,
                        evidence=evidence_from_json(r[5]),
                        index=int(r[2]),
                    )
                )
        if not self.readonly:  # moments returned by queries may become key moments
            with self._queried_lock:
                for h in hits:
                    self._queried.setdefault(h.stream, set()).add(h.index)
        return hits

    def _after(self, stream: str, index: int) -> SnippetRecord | None:
        sql = f"SELECT {_COLS} FROM records WHERE stream = ? AND idx > ? ORDER BY idx LIMIT 1"
        row = self._reader().execute(sql, (stream, int(index))).fetchone()
        return None if row is None else self._stored(row).record

    def timeline(self, stream: str) -> list[TimelineMoment]:
        """The stream's stored moments in time order; they tile the stream without overlaps."""
        check_stream(stream)
        self.refresh()
        sql = f"SELECT {_COLS} FROM records WHERE stream = ? ORDER BY idx"
        rows = self._reader().execute(sql, (stream,))
        return with_gaps([TimelineMoment.of(self._stored(r)) for r in rows], self.gaps(stream))

    def summary(self, stream: str) -> StreamSummary | None:
        """The stream's abstract tier: a running summary of all of it."""
        check_stream(stream)
        row = (
            self._reader()
            .execute("SELECT value FROM meta WHERE key = ?", (f"summary:{stream}",))
            .fetchone()
        )
        return None if row is None else StreamSummary.from_json(row[0])

    def recent(self, stream: str, n: int = 10) -> list[SnippetRecord]:
        """The newest `n` stored records of a stream, oldest first."""
        check_stream(stream)
        sql = f"SELECT {_COLS} FROM records WHERE stream = ? ORDER BY idx DESC LIMIT ?"
        rows = self._reader().execute(sql, (stream, max(1, int(n)))).fetchall()
        return [self._stored(r).record for r in reversed(rows)]

    def next_index(self, stream: str) -> int:
        """The snippet index after the last one stored (0 for a new stream)."""
        check_stream(stream)
        row = (
            self._reader()
            .execute("SELECT max(last_idx) FROM records WHERE stream = ?", (stream,))
            .fetchone()
        )
        return 0 if row is None or row[0] is None else int(row[0]) + 1

    def streams(self) -> list[dict[str, Any]]:
        """Per stream: stored records, covered span and snippets they stand for."""
        rows = self._reader().execute(
            "SELECT stream, count(*), min(start_t), max(end_t), sum(count) FROM records "
            "GROUP BY stream ORDER BY stream"
        )
        return [
            {"stream": s, "records": int(n), "start": float(a), "end": float(b), "snippets": int(c)}
            for s, n, a, b, c in rows
        ]

    def keyframe_path(self, stream: str, index: int) -> Path | None:
        """The keyframe file of snippet `index` (or of the moment that covers it), if stored."""
        check_stream(stream)
        direct = self.keyframes / stream / f"{int(index)}.jpg"
        if direct.is_file():
            return direct
        rec = self.get(stream, index)
        if rec is None or not rec.evidence.keyframe:
            return None
        path = self.keyframes / rec.evidence.keyframe
        return path if path.is_file() else None

    def keyframe(self, stream: str, index: int) -> bytes | None:
        """The JPEG keyframe of snippet `index` (or of the moment covering it), if stored."""
        path = self.keyframe_path(stream, index)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def count(self, stream: str | None = None) -> int:
        """Stored records, of one stream or of all."""
        conn = self._reader()
        if stream is None:
            return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
        check_stream(stream)
        return int(
            conn.execute("SELECT count(*) FROM records WHERE stream = ?", (stream,)).fetchone()[0]
        )

    @property
    def index(self) -> VectorIndex:
        """The in-memory dense index (searched by search(); brute_force() measures it)."""
        return self._index

    @property
    def generation(self) -> int:
        """Plans that removed records so far (readers drop what changed when it moves)."""
        return self._generation

    # -- lifetime ------------------------------------------------------------------------

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            with contextlib.suppress(OSError):
                self._lockfile.close()  # closing the file releases the flock
            self._lockfile = None

    def close(self) -> None:
        """Close every connection and release the writer lock (idempotent)."""
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
            with self._conns_lock:
                conns, self._conns = self._conns, []
            for _, conn in conns:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if self._writer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
                self._writer = None
                self._index.save_lists()
            self._release_lock()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writer"
        return f"MemoryStore({str(self.root)!r}, {mode}, {len(self._index)} moments)"
