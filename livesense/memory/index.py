"""VectorIndex: the dense side of search, every stored token in memory as numpy matrices.

A record's dense score is the max over its tokens of the cosine with the query. The first
pass scores every token with one matrix-vector product; the records owning the best few
hundred tokens are then re-scored exactly from their tokens (kept as float16 to halve
memory). Past PROJECT_AT tokens the first pass runs on the tokens projected on their top
PROJECT_DIM principal axes (fitted on a sample, refitted as the index doubles): a quarter of
the memory traffic, and nearly the same final ranking once re-scored exactly (at 100k
synthetic moments the 5th best score found was at most 0.014 below the true 5th best).

Rows are appended as records arrive and dropped on consolidation. A search reads a snapshot
of the arrays taken under a short lock: appends never wait for a search, and a search never
waits for more than an append.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from livesense.engines.text import DIM

RERANK = 256
"""Best first-pass tokens whose records are re-scored exactly (full-dimension first pass)."""
RERANK_PROJECTED = 512
"""Best first-pass tokens whose records are re-scored exactly (projected first pass)."""
PROJECT_AT = 50_000  # tokens held before the first pass is projected
PROJECT_DIM = 96
FIT_SAMPLE = 8192  # tokens the projection is fitted on


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index keeps of a record: its id, tokens (K, D), stream and time span."""

    rid: int
    tokens: np.ndarray
    stream: str
    start: float
    end: float


def pool(tokens: np.ndarray) -> np.ndarray:
    """The normalised mean of a record's tokens (zeros when it has none)."""
    if len(tokens) == 0:
        return np.zeros(tokens.shape[1] if tokens.ndim == 2 else DIM, np.float32)
    v = tokens.astype(np.float32).mean(axis=0)
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 1e-12 else v.astype(np.float32)


@dataclass(slots=True)
class _Arrays:
    """Per record (cap rows) and per token (tcap rows) arrays; rows of a record's tokens are
    contiguous and in record order, and every record has at least one token row."""

    rids: np.ndarray  # int64 (cap,)
    stream: np.ndarray  # int32 (cap,)
    start: np.ndarray  # float64 (cap,)
    end: np.ndarray  # float64 (cap,)
    alive: np.ndarray  # bool (cap,)
    toff: np.ndarray  # int64 (cap,) first token row
    tlen: np.ndarray  # int32 (cap,) token rows
    trec: np.ndarray  # int64 (tcap,) record row of each token row
    tokens: np.ndarray  # float16 (tcap, D): exact re-scoring
    first: np.ndarray  # float32 (tcap, D or PROJECT_DIM): first pass
    mean: np.ndarray | None = None  # float32 (D,), with basis: the projection
    basis: np.ndarray | None = None  # float32 (D, PROJECT_DIM)

    def to_first(self, tokens: np.ndarray) -> np.ndarray:
        t = tokens.astype(np.float32)
        if self.basis is None or self.mean is None:
            return t
        return np.asarray((t - self.mean) @ self.basis, np.float32)

    def query(self, q: np.ndarray) -> np.ndarray:
        """The query in first-pass space (the mean's share is the same for every token)."""
        return q if self.basis is None else np.ascontiguousarray(q @ self.basis)


def matvec(m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """m @ q for a (N, D) float32 matrix and a (D,) vector, on the calling thread.

    numpy's einsum runs its own SIMD loop, where `@` goes to the BLAS: OpenBLAS splits a large
    matrix-vector product over its threads, and on 2 busy cores (perception running) waiting
    for them made the 100k-row first pass about 3 times slower at the median (10-12 ms against
    3.5-4) and 2 to 4 times slower at p99. On idle cores the BLAS is about 1.5 ms faster; a
    search must stay fast while ingestion runs, so one thread it is.
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


def _empty(cap: int, tcap: int, dim: int, fdim: int | None = None) -> _Arrays:
    return _Arrays(
        rids=np.zeros(cap, np.int64),
        stream=np.zeros(cap, np.int32),
        start=np.zeros(cap, np.float64),
        end=np.zeros(cap, np.float64),
        alive=np.zeros(cap, bool),
        toff=np.zeros(cap, np.int64),
        tlen=np.zeros(cap, np.int32),
        trec=np.zeros(tcap, np.int64),
        tokens=np.zeros((tcap, dim), np.float16),
        first=np.zeros((tcap, fdim or dim), np.float32),
    )


_RECORD_FIELDS = ("rids", "stream", "start", "end", "alive", "toff", "tlen")


class VectorIndex:
    """In-memory dense index: record id -> tokens, with stream and time filters."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._a = _empty(1024, 4096, dim)
        self._n = 0  # record rows used
        self._tn = 0  # token rows used
        self._dead = 0
        self._row: dict[int, int] = {}
        self._streams: dict[str, int] = {}
        self._fitted_at = 0  # token rows when the projection was last fitted
        self._fit_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, rid: object) -> bool:
        return rid in self._row

    @property
    def projected(self) -> bool:
        """Whether the first pass runs on projected tokens."""
        return self._a.basis is not None

    def add(self, rid: int, tokens: np.ndarray, stream: str, start: float, end: float) -> None:
        self.add_many([IndexEntry(rid, tokens, stream, start, end)])

    def add_many(self, entries: Sequence[IndexEntry]) -> None:
        """Append records (an id already held is replaced)."""
        if not entries:
            return
        for e in entries:
            if e.tokens.ndim != 2 or e.tokens.shape[1] != self.dim:
                raise ValueError(f"record {e.rid}: tokens must be (K, {self.dim})")
        with self._lock:
            stale = [e.rid for e in entries if e.rid in self._row]
            if stale:
                self._remove_locked(stale)
        self.add_packed(
            np.array([e.rid for e in entries], np.int64),
            [e.stream for e in entries],
            np.array([e.start for e in entries], np.float64),
            np.array([e.end for e in entries], np.float64),
            np.array([len(e.tokens) for e in entries], np.int64),
            np.concatenate([e.tokens for e in entries]).astype(np.float32),
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
        fit: bool = True,
    ) -> None:
        """Append new records at once; tokens (sum(lens), D) are their rows in order.

        The fast path for loading a stored memory (ids must not be held yet); a loader
        passes fit=False and calls maybe_fit() once at the end.
        """
        k = len(rids)
        if k == 0:
            return
        lens = np.asarray(lens, np.int64)
        if tokens.shape != (int(lens.sum()), self.dim):
            raise ValueError(f"tokens must be ({int(lens.sum())}, {self.dim}), not {tokens.shape}")
        if (lens == 0).any():  # a record without tokens gets one zero row (it scores 0)
            parts = np.split(tokens, np.cumsum(lens)[:-1])
            zero = np.zeros((1, self.dim), tokens.dtype)
            tokens = np.concatenate([p if len(p) else zero for p in parts])
            lens = np.maximum(lens, 1)
        total = int(lens.sum())
        with self._lock:
            self._reserve(self._n + k, self._tn + total)
            a = self._a
            rows = slice(self._n, self._n + k)
            trows = slice(self._tn, self._tn + total)
            a.rids[rows] = rids
            a.stream[rows] = [self._stream_code(s) for s in streams]
            a.start[rows] = starts
            a.end[rows] = ends
            a.tlen[rows] = lens
            a.toff[rows] = self._tn + np.cumsum(lens) - lens
            a.trec[trows] = np.repeat(np.arange(self._n, self._n + k), lens)
            a.tokens[trows] = tokens
            a.first[trows] = a.to_first(tokens)
            a.alive[rows] = True  # last: a concurrent search sees a row only when complete
            for i, rid in enumerate(np.asarray(rids).tolist()):
                self._row[int(rid)] = self._n + i
            self._n += k
            self._tn += total
        if fit:
            self.maybe_fit()

    def reserve(self, records: int, tokens: int) -> None:
        """Make room for this many records and tokens in all (avoids regrowing on load)."""
        with self._lock:
            self._reserve(records, tokens)

    def remove(self, rids: Iterable[int]) -> int:
        """Drop records (ids not held are ignored); returns how many were dropped."""
        with self._lock:
            return self._remove_locked(rids)

    def clear(self) -> None:
        with self._lock:
            self._a = _empty(1024, 4096, self.dim)
            self._n = self._tn = self._dead = self._fitted_at = 0
            self._row.clear()

    def _remove_locked(self, rids: Iterable[int]) -> int:
        dropped = 0
        for rid in rids:
            row = self._row.pop(int(rid), None)
            if row is not None:
                self._a.alive[row] = False
                dropped += 1
        self._dead += dropped
        if self._dead > max(1024, self._n // 4):
            self._compact()
        return dropped

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
        b = _empty(new_cap, new_tcap, self.dim, a.first.shape[1])
        m, tm = self._n, self._tn
        for name in _RECORD_FIELDS:
            getattr(b, name)[:m] = getattr(a, name)[:m]
        b.tokens[:tm] = a.tokens[:tm]
        b.first[:tm] = a.first[:tm]
        b.trec[:tm] = a.trec[:tm]
        b.mean, b.basis = a.mean, a.basis
        self._a = b  # searches holding the old arrays keep reading a consistent snapshot

    def _compact(self) -> None:
        a = self._a
        keep = np.flatnonzero(a.alive[: self._n])
        lens = a.tlen[keep]
        total = int(lens.sum())
        b = _empty(
            max(1024, len(keep) * 3 // 2), max(4096, total * 3 // 2), self.dim, a.first.shape[1]
        )
        for name in _RECORD_FIELDS:
            getattr(b, name)[: len(keep)] = getattr(a, name)[keep]
        src = _token_rows(a.toff[keep], lens)
        b.tokens[:total] = a.tokens[src]
        b.first[:total] = a.first[src]
        b.toff[: len(keep)] = np.cumsum(lens) - lens
        b.trec[:total] = np.repeat(np.arange(len(keep)), lens)
        b.mean, b.basis = a.mean, a.basis
        self._a = b
        self._n, self._tn, self._dead = len(keep), total, 0
        self._row = {int(r): i for i, r in enumerate(b.rids[: self._n])}

    def maybe_fit(self) -> None:
        """Fit (or refit, once the tokens doubled) the projection of the first pass."""
        if self._tn < PROJECT_AT or (self._fitted_at and self._tn < 2 * self._fitted_at):
            return
        if not self._fit_lock.acquire(blocking=False):
            return  # another thread is fitting
        try:
            a, _, tn = self._snapshot()
            rng = np.random.default_rng(0)
            pick = np.sort(rng.choice(tn, min(FIT_SAMPLE, tn), replace=False))
            sample = a.tokens[pick].astype(np.float32)
            mean = sample.mean(axis=0).astype(np.float32)
            centred = (sample - mean).astype(np.float64)
            _, vecs = np.linalg.eigh(centred.T @ centred)  # principal axes, ascending
            basis = np.ascontiguousarray(vecs[:, ::-1][:, :PROJECT_DIM], np.float32)
            fitted = dataclasses.replace(a, mean=mean, basis=basis)
            first = np.zeros((len(a.tokens), PROJECT_DIM), np.float32)
            first[:tn] = fitted.to_first(a.tokens[:tn])  # the long part, outside the lock
            with self._lock:
                b = self._a
                if b.tokens is not a.tokens:  # regrown or compacted meanwhile: redo it all
                    first = np.zeros((len(b.tokens), PROJECT_DIM), np.float32)
                    tn = 0
                first[tn : self._tn] = fitted.to_first(b.tokens[tn : self._tn])
                self._a = dataclasses.replace(b, first=first, mean=fitted.mean, basis=fitted.basis)
                self._fitted_at = self._tn
        finally:
            self._fit_lock.release()

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
        if start is not None:
            mask &= (a.end[:n] > start) | (a.start[:n] >= start)
        if end is not None:
            mask &= a.start[:n] <= end
        return mask

    def search(
        self,
        q: np.ndarray,
        *,
        top_k: int = 5,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
        rerank: int | None = None,
    ) -> list[tuple[int, float]]:
        """Best (record id, max-over-tokens cosine) pairs, highest first, ties by id.

        Filters: stream, and overlap of the record's [start, end) with [start, end].
        """
        a, n, tn = self._snapshot()
        if n == 0 or top_k <= 0:
            return []
        mask = self._mask(a, n, stream, start, end)
        valid = 0 if mask is None else int(np.count_nonzero(mask))
        if mask is None or valid == 0:
            return []
        q = np.ascontiguousarray(q, np.float32)
        qf = a.query(q)
        if rerank is None:
            rerank = RERANK if a.basis is None else RERANK_PROJECTED
        if valid * 3 < n:  # few records pass the filters: score only their tokens
            subset = np.flatnonzero(mask)
            trows = _token_rows(a.toff[subset], a.tlen[subset])
            vals = matvec(a.first[trows], qf)
        else:
            trows = None
            vals = matvec(a.first[:tn], qf)
            if valid < n:
                vals[~mask[a.trec[:tn]]] = -np.inf
        # the records owning the best tokens: the best records by their best token
        m = min(len(vals), max(rerank, 4 * top_k))
        best = np.argpartition(vals, len(vals) - m)[len(vals) - m :]
        best = best[np.isfinite(vals[best])]
        rows = np.unique(a.trec[best if trows is None else trows[best]])
        exact = self._exact(a, rows, q)
        order = np.lexsort((a.rids[rows], -exact))[:top_k]
        return [(int(a.rids[rows[i]]), float(exact[i])) for i in order]

    def select(
        self,
        rids: Sequence[int],
        *,
        stream: str | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> list[int]:
        """The ids, in order, that are held and pass the stream and time filters."""
        with self._lock:
            a = self._a
            pairs = [(rid, self._row[rid]) for rid in rids if rid in self._row]
        if not pairs:
            return []
        rows = np.array([row for _, row in pairs], np.int64)
        keep = a.alive[rows].copy()
        if stream is not None:
            code = self._streams.get(stream)
            if code is None:
                return []
            keep &= a.stream[rows] == code
        if start is not None:
            keep &= (a.end[rows] > start) | (a.start[rows] >= start)
        if end is not None:
            keep &= a.start[rows] <= end
        return [rid for (rid, _), k in zip(pairs, keep.tolist(), strict=True) if k]

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
        with self._lock:
            a = self._a
            pairs = [(rid, self._row[rid]) for rid in rids if rid in self._row]
        if not pairs:
            return {}
        rows = np.array([row for _, row in pairs], np.int64)
        exact = self._exact(a, rows, np.ascontiguousarray(q, np.float32))
        return {rid: float(s) for (rid, _), s in zip(pairs, exact, strict=True)}

    @staticmethod
    def _exact(a: _Arrays, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Max over each record's float16 tokens of the cosine with q."""
        if len(rows) == 0:
            return np.zeros(0, np.float32)
        lens = a.tlen[rows].astype(np.int64)
        vals = matvec(to_float32(a.tokens[_token_rows(a.toff[rows], lens)]), q)
        return np.maximum.reduceat(vals, np.cumsum(lens) - lens)


def _token_rows(offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [off, off+len) for each (off, len), as one index array."""
    lens = lens.astype(np.int64)
    starts = np.cumsum(lens) - lens
    return np.repeat(offs.astype(np.int64) - starts, lens) + np.arange(int(lens.sum()))
