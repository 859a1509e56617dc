"""VectorIndex: the dense side of search, every stored token in memory.

A record's dense score is the max over its tokens of the cosine with the query. The first
pass asks faiss's inverted file (memory/token_lists.py) for the CANDIDATES tokens nearest the
query; the records owning them are then re-scored exactly from their tokens (kept here as
float16), so the scores are true and what the first pass can miss is a record none of whose
tokens is among the candidates, which the tests and bench/index_compare.py measure against
brute force.

The lists are fitted once FIT_AT tokens are held and fitted again each time the tokens
double, in a background thread: the writer keeps appending to the lists in use, and what it
appends or removes meanwhile is replayed on the new lists before they replace the old ones.
A filter (stream, time span) passing few tokens scores them all exactly; under a wider one the
lists consider only the tokens that pass.

Rows are appended as records arrive and dropped on consolidation. A search reads a snapshot
of the arrays taken under a short lock; the lists take many searches at once, and a write waits
only for the searches in flight.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.time_window import in_window
from livesense.memory.token_lists import (
    KEY_BITS,
    MAX_RID,
    TokenLists,
    key_rids,
    lists_for,
    token_keys,
)

log = logging.getLogger(__name__)

CANDIDATES = 256
"""First-pass tokens whose records are re-scored exactly."""
PROBE = 32
"""Lists a search scans (bench/index_compare.py: recall@10 >= 0.95 at 100k and 1M tokens)."""
FIT_AT = 16384  # tokens held before the lists are fitted (below: one exact list)
FIT_SAMPLE = 40  # tokens per list the lists are fitted on
GATHER_MAX = 8192  # a filter passing at most this many tokens: all are scored exactly


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index keeps of a record: its id, tokens (K, D), stream, time span and
    normalised text (what fusion matches query words in)."""

    rid: int
    tokens: np.ndarray
    stream: str
    start: float
    end: float
    text: str = ""


def pool(tokens: np.ndarray) -> np.ndarray:
    """The normalised mean of a record's tokens (zeros when it has none)."""
    if len(tokens) == 0:
        return np.zeros(tokens.shape[1] if tokens.ndim == 2 else DIM, np.float32)
    v = tokens.astype(np.float32).mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 1e-12 else v.astype(np.float32)


@dataclass(slots=True)
class _Arrays:
    """Per record (cap rows) and per token row (tcap rows) arrays. A record's token rows are
    contiguous and in record order, and every record has at least one."""

    rids: np.ndarray  # int64 (cap,)
    stream: np.ndarray  # int32 (cap,)
    start: np.ndarray  # float64 (cap,)
    end: np.ndarray  # float64 (cap,)
    alive: np.ndarray  # bool (cap,)
    text: np.ndarray  # object (cap,) normalised text
    toff: np.ndarray  # int64 (cap,) first token row
    tlen: np.ndarray  # int32 (cap,) token rows
    trec: np.ndarray  # int64 (tcap,) record row of each token row
    tokens: np.ndarray  # float16 (tcap, D): exact scoring


def matvec(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """m @ q for a (N, D) float32 matrix and a (D,) vector, on the calling thread.

    numpy's einsum runs its own SIMD loop, where `@` goes to the BLAS: OpenBLAS splits a large
    matrix-vector product over its threads, and on cores busy with perception the search
    waits for them. The BLAS wins only on idle cores; a search must stay fast while ingestion
    runs, so one thread it is.
    """
    return np.einsum("ij,j->i", m, q)


_F16_TO_F32 = (
    np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
)
"""Every float16 bit pattern's float32 value (256 KiB): a table look-up converts the tokens
re-scored per query about twice as fast as numpy's astype (whose float16 loop is scalar)."""


def to_float32(tokens: np.ndarray) -> np.ndarray:
    """float16 tokens as float32, exactly."""
    return np.take(_F16_TO_F32, tokens.view(np.uint16))


def _empty(cap: int, tcap: int, dim: int) -> _Arrays:
    return _Arrays(
        rids=np.zeros(cap, np.int64),
        stream=np.zeros(cap, np.int32),
        start=np.zeros(cap, np.float64),
        end=np.zeros(cap, np.float64),
        alive=np.zeros(cap, bool),
        text=np.full(cap, "", object),
        toff=np.zeros(cap, np.int64),
        tlen=np.zeros(cap, np.int32),
        trec=np.zeros(tcap, np.int64),
        tokens=np.zeros((tcap, dim), np.float16),
    )


_RECORD_FIELDS = ("rids", "stream", "start", "end", "alive", "text", "toff", "tlen")
_TOKEN_FIELDS = ("trec", "tokens")


class VectorIndex:
    """In-memory dense index: record id -> tokens, with stream and time filters."""

    def __init__(
        self, dim: int = DIM, *, probe: int = PROBE, lists_path: Path | None = None
    ) -> None:
        """lists_path: where the fitted lists are saved after each fit and by save_lists()
        (one writer per path), for the next start to load instead of fitting."""
        self.dim = dim
        self.probe = probe
        self.lists_path = lists_path
        self._lock = threading.Lock()  # the arrays and the id map
        self._write = threading.RLock()  # one writer at a time: arrays and lists agree
        self._a = _empty(1024, 4096, dim)
        self._lists = TokenLists(dim, probe=probe)
        self._n = 0  # record rows used
        self._tn = 0  # token rows used
        self._dead = 0
        self._live_tokens = 0
        self._row: dict[int, int] = {}
        self._ascending = True  # record ids were appended in increasing order
        self._streams: dict[str, int] = {}
        self._fitted_at = 0  # tokens when the lists were last fitted
        self._replay: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # while fitting
        self._fitting: threading.Event | None = None  # set when the fit under way ends
        self.loaded_from: Path | None = None  # the file the lists in use were loaded from

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, rid: object) -> bool:
        return rid in self._row

    @property
    def lists(self) -> int:
        """Lists of the first pass (1 before the fit: every token is scanned)."""
        return self._lists.lists

    def add(
        self, rid: int, tokens: np.ndarray, stream: str, start: float, end: float, text: str = ""
    ) -> None:
        self.add_many([IndexEntry(rid, tokens, stream, start, end, text)])

    def add_many(self, entries: Sequence[IndexEntry]) -> None:
        """Append records (an id already held is replaced)."""
        if not entries:
            return
        for e in entries:
            if e.tokens.ndim != 2 or e.tokens.shape[1] != self.dim:
                raise ValueError(f"record {e.rid}: tokens must be (K, {self.dim})")
        with self._write:
            stale = [e.rid for e in entries if e.rid in self._row]
            if stale:
                self.remove(stale)
            self.add_packed(
                np.array([e.rid for e in entries], np.int64),
                [e.stream for e in entries],
                np.array([e.start for e in entries], np.float64),
                np.array([e.end for e in entries], np.float64),
                np.array([len(e.tokens) for e in entries], np.int64),
                np.concatenate([e.tokens for e in entries]).astype(np.float32),
                texts=[e.text for e in entries],
            )

    def add_packed(
        self,
        rids: np.ndarray,
        streams: Sequence[str],
        starts: np.ndarray,
        ends: np.ndarray,
        lens: np.ndarray,
        tokens: np.ndarray,
        *,
        texts: Sequence[str] | None = None,
        fit: bool = True,
    ) -> None:
        """Append new records at once; tokens (sum(lens), D) are their rows in order, texts
        their normalised texts.

        The fast path for loading a stored memory (ids must not be held yet); a loader
        passes fit=False and calls maybe_fit(wait=True) once at the end.
        """
        k = len(rids)
        if k == 0:
            return
        lens = np.asarray(lens, np.int64)
        if tokens.shape != (int(lens.sum()), self.dim):
            raise ValueError(f"tokens must be ({int(lens.sum())}, {self.dim}), not {tokens.shape}")
        ids = np.asarray(rids, np.int64)
        if (ids < 0).any() or (ids > MAX_RID).any() or (lens >= 1 << KEY_BITS).any():
            raise ValueError(f"record ids must be in [0, {MAX_RID}], tokens under {1 << KEY_BITS}")
        if (lens == 0).any():  # a record without tokens gets one zero row (it scores 0)
            parts = np.split(tokens, np.cumsum(lens)[:-1])
            zero = np.zeros((1, self.dim), tokens.dtype)
            tokens = np.concatenate([p if len(p) else zero for p in parts])
            lens = np.maximum(lens, 1)
        total = int(lens.sum())
        with self._write:
            with self._lock:
                self._reserve(self._n + k, self._tn + total)
                a = self._a
                rows = slice(self._n, self._n + k)
                trows = slice(self._tn, self._tn + total)
                a.rids[rows] = ids
                a.stream[rows] = [self._stream_code(s) for s in streams]
                a.start[rows] = starts
                a.end[rows] = ends
                if texts is not None:
                    a.text[rows] = texts
                a.tlen[rows] = lens
                a.toff[rows] = self._tn + np.cumsum(lens) - lens
                a.trec[trows] = np.repeat(np.arange(self._n, self._n + k), lens)
                a.tokens[trows] = tokens
                a.alive[rows] = True  # last: a concurrent search sees a row only when complete
                if (self._n and ids[0] <= a.rids[self._n - 1]) or (np.diff(ids) <= 0).any():
                    self._ascending = False
                for i, rid in enumerate(ids.tolist()):
                    self._row[rid] = self._n + i
                self._n += k
                self._tn += total
                self._live_tokens += total
            keys = token_keys(ids, lens)
            vecs = np.asarray(tokens, np.float32)
            self._lists.add(keys, vecs)
            if self._replay is not None:
                self._replay.append((keys, vecs.astype(np.float16)))  # as stored
        if fit:
            self.maybe_fit()

    def reserve(self, records: int, tokens: int) -> None:
        """Make room for this many records and tokens in all (avoids regrowing on load)."""
        with self._lock:
            self._reserve(records, tokens)

    def remove(self, rids: Iterable[int]) -> int:
        """Drop records (ids not held are ignored); returns how many were dropped."""
        with self._write:
            with self._lock:
                rows = [r for rid in rids if (r := self._row.pop(int(rid), None)) is not None]
                if not rows:
                    return 0
                a = self._a
                at = np.array(rows, np.int64)
                keys = token_keys(a.rids[at], a.tlen[at])
                a.alive[at] = False
                self._dead += len(rows)
                self._live_tokens -= len(keys)
                if self._dead > max(1024, self._n // 4):
                    self._compact()
            self._lists.remove(keys)
            if self._replay is not None:
                self._replay.append((keys, None))
            return len(rows)

    def clear(self) -> None:
        with self._write, self._lock:
            self._a = _empty(1024, 4096, self.dim)
            self._lists = TokenLists(self.dim, probe=self.probe)
            self._n = self._tn = self._dead = self._fitted_at = self._live_tokens = 0
            self._row.clear()
            self._ascending = True
            self._replay = None  # a fit under way is dropped when it finishes

    def _stream_code(self, stream: str) -> int:
        code = self._streams.get(stream)
        if code is None:
            code = self._streams[stream] = len(self._streams)
        return code

    def _reserve(self, n: int, tn: int) -> None:
        a = self._a
        cap, tcap = len(a.rids), len(a.tokens)
        if n <= cap and tn <= tcap:
            return
        new_cap = max(2 * cap, n) if n > cap else cap
        new_tcap = max(2 * tcap, tn) if tn > tcap else tcap
        b = _empty(new_cap, new_tcap, self.dim)
        m, tm = self._n, self._tn
        for name in _RECORD_FIELDS:
            getattr(b, name)[:m] = getattr(a, name)[:m]
        for name in _TOKEN_FIELDS:
            getattr(b, name)[:tm] = getattr(a, name)[:tm]
        self._a = b  # searches holding the old arrays keep reading a consistent snapshot

    def _compact(self) -> None:
        a = self._a
        keep = np.flatnonzero(a.alive[: self._n])
        lens = a.tlen[keep]
        total = int(lens.sum())
        b = _empty(max(1024, len(keep) * 3 // 2), max(4096, total * 3 // 2), self.dim)
        for name in _RECORD_FIELDS:
            getattr(b, name)[: len(keep)] = getattr(a, name)[keep]
        b.tokens[:total] = a.tokens[_token_rows(a.toff[keep], lens)]
        b.toff[: len(keep)] = np.cumsum(lens) - lens
        b.trec[:total] = np.repeat(np.arange(len(keep)), lens)
        self._a = b
        self._n, self._tn, self._dead = len(keep), total, 0
        self._row = {int(r): i for i, r in enumerate(b.rids[: self._n])}

    # -- fitting the lists ---------------------------------------------------------------

    def maybe_fit(self, *, wait: bool = False) -> None:
        """Fit the lists once FIT_AT tokens are held, and again each time they double: in a
        background thread, or in this one with wait=True (a loader, before searches)."""
        while True:
            with self._write:
                tn = self._live_tokens
                if tn < FIT_AT or (self._fitted_at and tn < 2 * self._fitted_at):
                    return
                under_way = self._fitting
                if under_way is None:
                    self._fitting = threading.Event()
                    snapshot = self._start_fit()
                    break
            if not wait:
                return
            under_way.wait()  # a background fit: wait for it, then look again
        if wait:
            self._fit(*snapshot, threads=os.cpu_count() or 1)
        else:
            threading.Thread(
                target=self._fit, args=snapshot, name="vector-lists-fit", daemon=True
            ).start()

    def _start_fit(self) -> tuple[_Arrays, np.ndarray, TokenLists]:
        """(arrays, live rows, lists in use) as the fit starts; later writes are replayed."""
        with self._lock:
            a, n = self._a, self._n
            rows = np.flatnonzero(a.alive[:n])
        self._replay = []
        return a, rows, self._lists

    def _fit(self, a: _Arrays, rows: np.ndarray, old: TokenLists, threads: int = 1) -> None:
        try:
            trows = _token_rows(a.toff[rows], a.tlen[rows])
            lists = lists_for(len(trows))
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(trows, min(len(trows), FIT_SAMPLE * lists), replace=False))
            new = TokenLists(
                self.dim, lists=lists, sample=a.tokens[pick], probe=self.probe, threads=threads
            )
            keys = token_keys(a.rids[rows], a.tlen[rows])
            for k in range(0, len(trows), 65536):
                part = trows[k : k + 65536]
                new.add(keys[k : k + 65536], a.tokens[part].astype(np.float32), threads=threads)
            while True:  # what was written during the fit, in order; the last few writes
                with self._write:  # with the writer held off, as the new lists take over
                    if self._lists is not old or self._replay is None:
                        return  # cleared meanwhile
                    pending, self._replay = self._replay, []
                    if len(pending) <= 16:
                        _replay(new, pending)
                        self._lists = new
                        self._fitted_at = len(trows)
                        break
                _replay(new, pending)
            if self.lists_path is not None:
                self._save(new, self.lists_path)
        except Exception:
            log.exception("fitting the vector lists failed; the old lists stay in use")
        finally:
            with self._write:
                self._replay = None
                if self._fitting is not None:
                    self._fitting.set()
                self._fitting = None

    # -- persistence ---------------------------------------------------------------------

    def save_lists(self) -> None:
        """Write the fitted lists to lists_path (if set; nothing before the fit). During a fit
        the lists in use are saved: they hold every token too."""
        with self._write:
            lists = self._lists if self._fitted_at else None
        if lists is not None and self.lists_path is not None:
            self._save(lists, self.lists_path)

    @staticmethod
    def _save(lists: TokenLists, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            lists.save(tmp)
            tmp.replace(path)
        except (OSError, RuntimeError) as e:
            log.warning("vector lists not saved to %s: %s", path, e)

    def load_lists(self, path: Path) -> bool:
        """Use the lists saved in `path` for the records held (call after loading them, fit
        off): records missing from the file are added to it, records gone are removed.
        False (and nothing changed) when the file is missing or unreadable."""
        try:
            lists = TokenLists.load(path, self.dim, probe=self.probe)
        except (OSError, RuntimeError, ValueError) as e:
            if path.exists():
                log.warning("vector lists in %s not used (%s); they are fitted again", path, e)
            return False
        with self._write:
            with self._lock:
                a, n = self._a, self._n
                rows = np.flatnonzero(a.alive[:n])
            held = token_keys(a.rids[rows], a.tlen[rows])
            trows = _token_rows(a.toff[rows], a.tlen[rows])
            saved = lists.keys()
            found = np.isin(held, saved, assume_unique=True)
            probe = np.flatnonzero(found)[:: max(1, int(found.sum()) // 64)][:64]
            if not lists.agrees(held[probe], a.tokens[trows[probe]].astype(np.float32)):
                log.warning("vector lists in %s hold other tokens; they are fitted again", path)
                return False
            lists.remove(np.setdiff1d(saved, held, assume_unique=True))
            if not found.all():
                lists.add(held[~found], a.tokens[trows[~found]].astype(np.float32))
            self._lists = lists
            self._fitted_at = int(found.sum())  # refitted once the tokens double from there
            self.loaded_from = path
        return True

    # -- searching -----------------------------------------------------------------------

    def _snapshot(self) -> tuple[_Arrays, int, int]:
        with self._lock:
            return self._a, self._n, self._tn

    def _mask(
        self, a: _Arrays, n: int, stream: str | None, start: float | None, end: float | None
    ) -> np.ndarray | None:
        """Rows [0, n) alive and passing the filters (None: the stream is unknown)."""
        mask = a.alive[:n].copy()
        if stream is not None:
            code = self._streams.get(stream)
            if code is None:
                return None
            mask &= a.stream[:n] == code
        if start is not None or end is not None:
            mask &= in_window(a.start[:n], a.end[:n], start, end)
        return mask

    def _passing(
        self,
        a: _Arrays,
        rows: np.ndarray,
        stream: str | None,
        start: float | None,
        end: float | None,
    ) -> np.ndarray:
        """Which of the given rows are alive and pass the filters."""
        keep = a.alive[rows].copy()
        if stream is not None:
            code = self._streams.get(stream)
            if code is None:
                return np.zeros(len(rows), bool)
            keep &= a.stream[rows] == code
        if start is not None:
            keep &= (a.end[rows] > start) | (a.start[rows] >= start)
        if end is not None:
            keep &= a.start[rows] <= end
        return keep

    def search(
        self,
        q: np.ndarray,
        *,
        top_k: int = 5,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
        candidates: int | None = None,
    ) -> list[tuple[int, float]]:
        """Best (record id, max-over-tokens cosine) pairs, highest first, ties by id.

        Filters: stream, and overlap of the record's [start, end) with [start, end].
        """
        a, n, _ = self._snapshot()
        if n == 0 or top_k <= 0:
            return []
        q = np.ascontiguousarray(q, np.float32)
        filtered = stream is not None or start is not None or end is not None
        subset = None
        want = max(candidates or CANDIDATES, 4 * top_k)
        if filtered:
            mask = self._mask(a, n, stream, start, end)
            if mask is None or not mask.any():
                return []
            subset = np.flatnonzero(mask)
            passing = int(a.tlen[subset].sum())
            if passing <= GATHER_MAX:
                return self._exact_top(a, subset, q, top_k)
        allowed = None if subset is None else token_keys(a.rids[subset], a.tlen[subset])
        keys = self._lists.search(q, want, allowed)
        b, ids, rows = self._held(np.unique(key_rids(keys)).tolist())
        if filtered:
            rows = rows[self._passing(b, rows, stream, start, end)]
            if len(rows) < top_k:  # the lists held too few that pass: score them all
                assert subset is not None
                return self._exact_top(a, subset, q, top_k)
        return self._top(b, rows, self._exact(b, rows, q), top_k)

    @staticmethod
    def _top(
        a: _Arrays, rows: np.ndarray, exact: np.ndarray, top_k: int
    ) -> list[tuple[int, float]]:
        order = np.lexsort((a.rids[rows], -exact))[:top_k]
        return [(int(a.rids[rows[i]]), float(exact[i])) for i in order]

    def _exact_top(
        self, a: _Arrays, rows: np.ndarray, q: np.ndarray, top_k: int
    ) -> list[tuple[int, float]]:
        """The best of the given records by exact score (every token of theirs scored)."""
        return self._top(a, rows, self._exact(a, rows, q), top_k)

    def _held(self, rids: Iterable[int]) -> tuple[_Arrays, np.ndarray, np.ndarray]:
        """(snapshot, ids, their rows) of the given ids that are held, in order. While ids
        were appended in increasing order a binary search finds them, else the dict does."""
        if self._ascending:
            a, n, _ = self._snapshot()
            ids = np.fromiter(rids, np.int64)
            rows = np.minimum(np.searchsorted(a.rids[:n], ids), max(n - 1, 0))
            ok = (a.rids[rows] == ids) & a.alive[rows] if n else np.zeros(len(ids), bool)
            return a, ids[ok], rows[ok]
        with self._lock:
            a = self._a
            pairs = [(rid, self._row[rid]) for rid in rids if rid in self._row]
        ids = np.array([rid for rid, _ in pairs], np.int64)
        return a, ids, np.array([row for _, row in pairs], np.int64)

    def brute_force(self, q: np.ndarray, top_k: int = 5) -> list[tuple[int, float]]:
        """What search approximates: best (id, exact max-over-tokens cosine) over every token,
        highest first, ties by id. For measuring search (it converts and scores every token)."""
        a, n, tn = self._snapshot()
        if n == 0 or top_k <= 0:
            return []
        q = np.ascontiguousarray(q, np.float32)
        vals = np.concatenate(
            [matvec(to_float32(a.tokens[k : min(tn, k + 65536)]), q) for k in range(0, tn, 65536)]
        )
        best = np.maximum.reduceat(vals, a.toff[:n])  # a record's rows are contiguous, in order
        best[~a.alive[:n]] = -np.inf
        order = np.lexsort((a.rids[:n], -best))[:top_k]
        return [(int(a.rids[r]), float(best[r])) for r in order if np.isfinite(best[r])]

    def select(
        self,
        rids: Sequence[int],
        *,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> list[int]:
        """The ids, in order, that are held and pass the stream and time filters."""
        a, ids, rows = self._held(rids)
        if len(rows) == 0:
            return []
        keep = a.alive[rows].copy()
        if stream is not None:
            code = self._streams.get(stream)
            if code is None:
                return []
            keep &= a.stream[rows] == code
        if start is not None or end is not None:
            keep &= in_window(a.start[rows], a.end[rows], start, end)
        return ids[keep].tolist()

    def texts(self, rids: Iterable[int]) -> list[tuple[int, str]]:
        """(id, normalised text) of the given records that are held."""
        a, ids, rows = self._held(rids)
        return list(zip(ids.tolist(), a.text[rows].tolist(), strict=True))

    def count(self, stream: str | None = None) -> int:
        """Records held, of one stream or of all."""
        a, n, _ = self._snapshot()
        mask = self._mask(a, n, stream, None, None) if n else None
        return 0 if mask is None else int(np.count_nonzero(mask))

    def span(
        self, *, stream: str | None = None, start: float | None = None, end: float | None = None
    ) -> tuple[int, int] | None:
        """(lowest, highest) id of the records passing the filters, None when none does."""
        a, n, _ = self._snapshot()
        mask = self._mask(a, n, stream, start, end) if n else None
        if mask is None:
            return None
        ids = a.rids[:n][mask]
        return (int(ids.min()), int(ids.max())) if len(ids) else None

    def scores(self, q: np.ndarray, rids: Iterable[int]) -> dict[int, float]:
        """Exact max-over-tokens cosine for the given records (ids not held are left out)."""
        a, ids, rows = self._held(rids)
        if len(rows) == 0:
            return {}
        exact = self._exact(a, rows, np.ascontiguousarray(q, np.float32))
        return dict(zip(ids.tolist(), exact.tolist(), strict=True))

    @staticmethod
    def _exact(a: _Arrays, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Max over each record's float16 tokens of the cosine with q."""
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        lens = a.tlen[rows].astype(np.int64)
        vals = matvec(to_float32(np.take(a.tokens, _token_rows(a.toff[rows], lens), axis=0)), q)
        return np.maximum.reduceat(vals, np.cumsum(lens) - lens)


def _replay(lists: TokenLists, writes: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
    """Apply appends (keys, vectors) and removals (keys, None) to lists, in order."""
    for keys, vecs in writes:
        if vecs is None:
            lists.remove(keys)
        else:
            lists.add(keys, vecs)


def _token_rows(offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [off, off+len) for each (off, len), as one index array."""
    lens = lens.astype(np.int64)
    starts = np.cumsum(lens) - lens
    return np.repeat(offs.astype(np.int64) - starts, lens) + np.arange(int(lens.sum()))
