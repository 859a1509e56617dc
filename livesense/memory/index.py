"""VectorIndex: the dense side of search, every stored token in memory as numpy matrices.

A record's dense score is the max over its tokens of the cosine with the query. The first
pass scores tokens with matrix-vector products; the records owning the best few hundred tokens
are then re-scored exactly from their tokens (kept as float16 to halve memory).

The first pass changes as the index grows, in fits redone as it doubles:
- past PROJECT_AT tokens it runs on the tokens projected on their top PROJECT_DIM principal
  axes, a quarter of the memory traffic;
- past LISTS_AT tokens the projected tokens are also partitioned into coarse lists by k-means
  (an inverted file, as in faiss's IVF) and kept sorted by list, and a search scans only the
  lists whose centroids are closest to the query, about PROBE_SHARE of the tokens, plus the
  tokens appended since the last sort (merged into the lists once they pass RESORT_SHARE).
The exact re-scoring keeps the scores true; what the first pass can miss is a record whose
best token sits in a list far from the query, which the tests and the benchmark measure
against brute force.

Rows are appended as records arrive and dropped on consolidation. A search reads a snapshot
of the arrays taken under a short lock: appends never wait for a search, and a search never
waits for more than an append. Fits and sorts build new arrays outside the lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from livesense.engines.text import DIM
from livesense.memory.time_window import in_window

RERANK = 256
"""Best first-pass tokens whose records are re-scored exactly (full-dimension first pass)."""
RERANK_PROJECTED = 512
"""Best first-pass tokens whose records are re-scored exactly (projected first pass)."""
PROJECT_AT = 8192  # tokens held before the first pass is projected
LISTS_AT = 50_000  # tokens held before the projected tokens are partitioned in lists
PROJECT_DIM = 96
FIT_SAMPLE = 8192  # tokens the projection is fitted on
LISTS_MIN, LISTS_MAX = 64, 1024  # coarse lists: about sqrt(tokens), within these bounds
KMEANS_SAMPLE = 32  # tokens per list the centroids are trained on
KMEANS_ROUNDS = 10
PROBE_SHARE = 1 / 12  # share of the sorted tokens a search scans, closest lists first
PROBE_MIN = 12  # lists scanned at least
RESORT_SHARE = 1 / 12  # the unsorted tail is merged into the lists past this share
GATHER_COST = 4  # a filter's token, gathered, costs as much as this many scanned in a list
EXACT_STREAM_TOKENS = 8192
"""A search within one stream of at most this many tokens scores every token of the stream
exactly, so that which records it finds depends on that stream alone (beyond it, the first
pass runs over the stream's own tokens, in the projection fitted on every stream's)."""


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
    """Per record (cap rows), per token row (tcap rows) and per first-pass position (tcap)
    arrays. A record's token rows are contiguous and in record order, and every record has
    at least one. Positions [0, sorted_n) of the first pass hold token rows [0, sorted_n)
    sorted by coarse list; positions from sorted_n on are the token rows of the same number."""

    rids: np.ndarray  # int64 (cap,)
    stream: np.ndarray  # int32 (cap,)
    start: np.ndarray  # float64 (cap,)
    end: np.ndarray  # float64 (cap,)
    alive: np.ndarray  # bool (cap,)
    text: np.ndarray  # object (cap,) normalised text
    toff: np.ndarray  # int64 (cap,) first token row
    tlen: np.ndarray  # int32 (cap,) token rows
    trec: np.ndarray  # int64 (tcap,) record row of each token row
    tpos: np.ndarray  # int64 (tcap,) first-pass position of each token row
    tokens: np.ndarray  # float16 (tcap, D): exact re-scoring
    first: np.ndarray  # float32 (tcap, D or PROJECT_DIM): first pass, by position
    frec: np.ndarray  # int64 (tcap,) record row of each position
    flist: np.ndarray  # int16 (tcap,) coarse list of each position (0 before the fit)
    mean: np.ndarray | None = None  # float32 (D,), with basis: the projection
    basis: np.ndarray | None = None  # float32 (D, PROJECT_DIM)
    centroids: np.ndarray | None = None  # float32 (lists, PROJECT_DIM)
    bounds: np.ndarray | None = None  # int64 (lists + 1,): list c is [bounds[c], bounds[c+1])
    sorted_n: int = 0

    def to_first(self, tokens: np.ndarray) -> np.ndarray:
        t = tokens.astype(np.float32)
        if self.basis is None or self.mean is None:
            return t
        return np.asarray((t - self.mean) @ self.basis, np.float32)

    def query(self, q: np.ndarray) -> np.ndarray:
        """The query in first-pass space (the mean's share is the same for every token)."""
        return q if self.basis is None else np.ascontiguousarray(q @ self.basis)

    def assign(self, first: np.ndarray) -> np.ndarray:
        """The nearest centroid of each first-pass vector (zeros before the fit)."""
        if self.centroids is None:
            return np.zeros(len(first), np.int16)
        return nearest(first, self.centroids)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2), as int16, in bounded chunks."""
    half = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(x), np.int16)
    for k in range(0, len(x), 16384):
        out[k : k + 16384] = np.argmax(x[k : k + 16384] @ centroids.T - half, axis=1)
    return out


def kmeans(x: np.ndarray, k: int, rounds: int = KMEANS_ROUNDS, seed: int = 0) -> np.ndarray:
    """k centroids of the rows of x by Lloyd's rounds; an emptied list takes a random row."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(rounds):
        label = nearest(x, c).astype(np.int64)
        counts = np.bincount(label, minlength=k)
        sums = np.stack([np.bincount(label, x[:, j], k) for j in range(x.shape[1])], axis=1)
        empty = counts == 0
        c[~empty] = sums[~empty] / counts[~empty, None]
        c[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
    return np.ascontiguousarray(c, np.float32)


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
        text=np.full(cap, "", object),
        toff=np.zeros(cap, np.int64),
        tlen=np.zeros(cap, np.int32),
        trec=np.zeros(tcap, np.int64),
        tpos=np.zeros(tcap, np.int64),
        tokens=np.zeros((tcap, dim), np.float16),
        first=np.zeros((tcap, fdim or dim), np.float32),
        frec=np.zeros(tcap, np.int64),
        flist=np.zeros(tcap, np.int16),
    )


_RECORD_FIELDS = ("rids", "stream", "start", "end", "alive", "text", "toff", "tlen")
_TOKEN_FIELDS = ("trec", "tpos", "tokens", "first", "frec", "flist")
_FIT_FIELDS = ("mean", "basis", "centroids", "bounds", "sorted_n")


def _sorted_by_list(a: _Arrays, tn: int) -> _Arrays:
    """a's first pass with positions [0, tn) sorted by list (new arrays; a is not changed)."""
    order = np.argsort(a.flist[:tn], kind="stable")
    inverse = np.empty(tn, np.int64)
    inverse[order] = np.arange(tn)
    first = np.zeros_like(a.first)
    first[:tn] = a.first[:tn][order]
    frec = np.zeros_like(a.frec)
    frec[:tn] = a.frec[:tn][order]
    flist = np.zeros_like(a.flist)
    flist[:tn] = a.flist[:tn][order]
    tpos = np.zeros_like(a.tpos)
    tpos[:tn] = inverse[a.tpos[:tn]]
    assert a.centroids is not None
    counts = np.bincount(flist[:tn].astype(np.int64), minlength=len(a.centroids))
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return dataclasses.replace(
        a, first=first, frec=frec, flist=flist, tpos=tpos, bounds=bounds, sorted_n=tn
    )


def _append_tail(b: _Arrays, new: _Arrays, lo: int, hi: int) -> None:
    """Copy b's token rows [lo, hi), appended in b after `new` was built from b, into new's
    unsorted tail (positions = token rows there)."""
    if hi <= lo:
        return
    rows = np.arange(lo, hi)
    new.trec[lo:hi] = b.trec[lo:hi]
    new.tokens[lo:hi] = b.tokens[lo:hi]
    new.tpos[lo:hi] = rows
    new.frec[lo:hi] = b.trec[lo:hi]
    if new.basis is b.basis:
        new.first[lo:hi] = b.first[b.tpos[lo:hi]]
        new.flist[lo:hi] = b.flist[b.tpos[lo:hi]]
    else:
        new.first[lo:hi] = new.to_first(b.tokens[lo:hi])
        new.flist[lo:hi] = new.assign(new.first[lo:hi])


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
        self._ascending = True  # record ids were appended in increasing order
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

    @property
    def lists(self) -> int:
        """Coarse lists of the first pass (0: every token is scanned)."""
        c = self._a.centroids
        return 0 if c is None else len(c)

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
            if texts is not None:
                a.text[rows] = texts
            a.tlen[rows] = lens
            a.toff[rows] = self._tn + np.cumsum(lens) - lens
            a.trec[trows] = np.repeat(np.arange(self._n, self._n + k), lens)
            a.tpos[trows] = np.arange(self._tn, self._tn + total)  # the unsorted tail
            a.frec[trows] = a.trec[trows]
            a.tokens[trows] = tokens
            a.first[trows] = a.to_first(tokens)
            a.flist[trows] = a.assign(a.first[trows])
            a.alive[rows] = True  # last: a concurrent search sees a row only when complete
            ids = np.asarray(rids, np.int64)
            if (self._n and ids[0] <= a.rids[self._n - 1]) or (np.diff(ids) <= 0).any():
                self._ascending = False
            for i, rid in enumerate(ids.tolist()):
                self._row[rid] = self._n + i
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
            self._ascending = True

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
        for name in _TOKEN_FIELDS:
            getattr(b, name)[:tm] = getattr(a, name)[:tm]
        for name in _FIT_FIELDS:
            setattr(b, name, getattr(a, name))
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
        for name in _FIT_FIELDS:
            setattr(b, name, getattr(a, name))
        src = _token_rows(a.toff[keep], lens)
        b.tokens[:total] = a.tokens[src]
        b.first[:total] = a.first[a.tpos[src]]
        b.flist[:total] = a.flist[a.tpos[src]]
        b.toff[: len(keep)] = np.cumsum(lens) - lens
        b.trec[:total] = b.frec[:total] = np.repeat(np.arange(len(keep)), lens)
        b.tpos[:total] = np.arange(total)
        b.sorted_n = 0
        if b.centroids is not None:
            b = _sorted_by_list(b, total)
        self._a = b
        self._n, self._tn, self._dead = len(keep), total, 0
        self._row = {int(r): i for i, r in enumerate(b.rids[: self._n])}

    def maybe_fit(self) -> None:
        """Fit (or refit, once the tokens doubled) the projection and the coarse lists of the
        first pass; or merge a long unsorted tail into the lists."""
        tn = self._tn
        a = self._a
        fit = tn >= PROJECT_AT and (
            not self._fitted_at or tn >= 2 * self._fitted_at or (tn >= LISTS_AT > self._fitted_at)
        )
        resort = a.centroids is not None and tn - a.sorted_n > RESORT_SHARE * max(a.sorted_n, 1)
        if not (fit or resort):
            return
        if not self._fit_lock.acquire(blocking=False):
            return  # another thread is fitting
        try:
            if fit:
                self._fit()
            else:
                self._resort()
        finally:
            self._fit_lock.release()

    def _fit(self) -> None:
        a, _, tn = self._snapshot()
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(tn, min(FIT_SAMPLE, tn), replace=False))
        sample = a.tokens[pick].astype(np.float32)
        mean = sample.mean(axis=0).astype(np.float32)
        centred = (sample - mean).astype(np.float64)
        _, vecs = np.linalg.eigh(centred.T @ centred)  # principal axes, ascending
        basis = np.ascontiguousarray(vecs[:, ::-1][:, :PROJECT_DIM], np.float32)
        centroids = None
        if tn >= LISTS_AT:
            lists = int(np.clip(round(tn**0.5), LISTS_MIN, LISTS_MAX))
            projected = dataclasses.replace(a, mean=mean, basis=basis)
            pick = np.sort(rng.choice(tn, min(KMEANS_SAMPLE * lists, tn), replace=False))
            centroids = kmeans(projected.to_first(a.tokens[pick]), lists)
        with self._lock:
            b = self._a
            if b.tokens is not a.tokens:  # regrown or compacted meanwhile: refit from b
                a, tn = b, self._tn
        # the long part, outside the lock: every token row projected, assigned and sorted
        new = _empty(len(a.rids), len(a.tokens), self.dim, PROJECT_DIM)
        for name in (*_RECORD_FIELDS, "trec", "tokens"):
            setattr(new, name, getattr(a, name))  # shared: rows change only under the lock
        new.mean, new.basis, new.centroids = mean, basis, centroids
        new.frec[:tn] = a.trec[:tn]
        new.tpos[:tn] = np.arange(tn)
        for k in range(0, tn, 65536):
            part = slice(k, min(tn, k + 65536))
            new.first[part] = new.to_first(a.tokens[part])
            new.flist[part] = new.assign(new.first[part])
        if centroids is not None:
            new = _sorted_by_list(new, tn)
        with self._lock:
            b = self._a
            if b.tokens is not a.tokens:
                return  # regrown or compacted again: the next append retries
            _append_tail(b, new, tn, self._tn)
            self._a = new
            self._fitted_at = self._tn

    def _resort(self) -> None:
        a, _, tn = self._snapshot()
        new = _sorted_by_list(a, tn)
        with self._lock:
            b = self._a
            if b.first is not a.first:
                return  # regrown, compacted or refitted meanwhile: the next append retries
            _append_tail(b, new, tn, self._tn)
            self._a = new

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

    @staticmethod
    def _gather_first(a: _Arrays, subset: np.ndarray, n: int, tn: int) -> bool:
        """Whether a filter passes so few records that scoring their tokens, gathered, costs
        less than scanning the lists (without lists: when under a third of records pass)."""
        if a.centroids is None:
            return len(subset) * 3 < n
        scanned = PROBE_SHARE * a.sorted_n + tn - a.sorted_n
        return GATHER_COST * int(a.tlen[subset].sum()) <= scanned

    @staticmethod
    def _probe(a: _Arrays, qf: np.ndarray, tn: int) -> list[tuple[int, int]]:
        """Position ranges a full search scans: the closest lists (about PROBE_SHARE of the
        sorted tokens, PROBE_MIN lists at least) and the unsorted tail."""
        if a.centroids is None or a.bounds is None or a.sorted_n == 0:
            return [(0, tn)]
        sizes = np.diff(a.bounds)
        order = np.argsort(-matvec(a.centroids, qf))
        reach = np.cumsum(sizes[order])
        k = max(PROBE_MIN, int(np.searchsorted(reach, PROBE_SHARE * a.sorted_n)) + 1)
        ranges: list[tuple[int, int]] = []
        for c in np.sort(order[:k]).tolist():  # neighbouring lists make one range
            lo, hi = int(a.bounds[c]), int(a.bounds[c + 1])
            if ranges and ranges[-1][1] == lo:
                ranges[-1] = (ranges[-1][0], hi)
            elif hi > lo:
                ranges.append((lo, hi))
        if tn > a.sorted_n:
            ranges.append((a.sorted_n, tn))
        return ranges

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
        subset = np.flatnonzero(mask) if valid < n or stream is not None else None
        if subset is not None and stream is not None:
            small = int(a.tlen[subset].sum()) <= EXACT_STREAM_TOKENS
            if small:  # every token of the stream, exactly: nothing else counts
                exact = self._exact(a, subset, q)
                order = np.lexsort((a.rids[subset], -exact))[:top_k]
                return [(int(a.rids[subset[i]]), float(exact[i])) for i in order]
        found = None
        if subset is None or (stream is None and not self._gather_first(a, subset, n, tn)):
            # the closest lists (or every token); a filter applies to what they hold
            ranges = self._probe(a, qf, tn)
            vals = np.concatenate([matvec(a.first[lo:hi], qf) for lo, hi in ranges])
            owner = np.concatenate([a.frec[lo:hi] for lo, hi in ranges])
            if subset is not None:
                keep = mask[owner]
                vals, owner = vals[keep], owner[keep]
            if len(vals) >= top_k or subset is None:  # else the lists held too few that pass
                found = vals, owner
        if found is None:  # the tokens of the records that pass the filters, all of them
            assert subset is not None
            trows = _token_rows(a.toff[subset], a.tlen[subset])
            found = matvec(np.take(a.first, a.tpos[trows], axis=0), qf), a.trec[trows]
        vals, owner = found
        # the records owning the best tokens: the best records by their best token
        m = min(len(vals), max(rerank, 4 * top_k))
        best = np.argpartition(vals, len(vals) - m)[len(vals) - m :]
        rows = np.unique(owner[best])
        exact = self._exact(a, rows, q)
        order = np.lexsort((a.rids[rows], -exact))[:top_k]
        return [(int(a.rids[rows[i]]), float(exact[i])) for i in order]

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


def _token_rows(offs: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated ranges [off, off+len) for each (off, len), as one index array."""
    lens = lens.astype(np.int64)
    starts = np.cumsum(lens) - lens
    return np.repeat(offs.astype(np.int64) - starts, lens) + np.arange(int(lens.sum()))
