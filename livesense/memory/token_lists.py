"""TokenLists: faiss's inverted file over every stored token, the first pass of dense search.

Tokens are keyed (record id << KEY_BITS) + their position in the record, so that a record's
tokens are found and removed by its id alone. Until FIT_AT tokens there is one list and the
tokens are kept as float16, which a search scans entirely (exact: the tokens are stored as
float16). Fitted, the tokens are split into about sqrt(n) lists by k-means and kept as 8-bit
codes (a quarter of float32); a search scans the `probe` lists whose centroids are closest to
the query. Appends assign a token to its list and removals take it out at once (faiss's
direct map), with no refit; fitting a new set of lists is VectorIndex's job, off the writer.

faiss may not be changed while it searches: many searches run at once, a write waits for
them (a write of a snippet's tokens takes microseconds). Searches and writes run on the
calling thread alone: OpenMP threads waiting for each other on busy cores make the rare call
very slow. A fit may use more threads.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

HASHTABLE = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # (missing from the stubs)
"""faiss's direct map by id: a removal finds a token's list and place at once."""
MAGIC = b"livesense-token-lists-1\n"  # a saved file starts with these bytes
KEY_BITS = 12
"""A token's key is (record id << KEY_BITS) + its position: up to 4,096 tokens a record."""
MAX_RID = (1 << (63 - KEY_BITS)) - 1
LISTS_MIN, LISTS_MAX = 64, 4096  # fitted lists: about sqrt(tokens), within these bounds
RARE_SHARE = 0.01
"""Share of the fitting sample farthest from every centroid: tokens as far as these are kept
in an exact list that every search scans (a lone moment unlike the rest would otherwise sit in
a list the query's closest centroids may not reach)."""
KMEANS_ROUNDS = 12


def token_keys(rids: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The keys of records' tokens, in row order (records `rids` holding `lens` tokens each)."""
    lens = np.asarray(lens, np.int64)
    starts = np.cumsum(lens) - lens
    pos = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    return np.repeat(np.asarray(rids, np.int64) << KEY_BITS, lens) + pos


def key_rids(keys: np.ndarray) -> np.ndarray:
    """The record ids owning the given token keys."""
    return np.asarray(keys, np.int64) >> KEY_BITS


class ReadWriteLock:
    """Many readers at once or one writer; a waiting writer stops new readers from entering."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writers = 0  # waiting or writing
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._writers -= 1
                self._cond.notify_all()


class TokenLists:
    """An inverted file of token vectors (inner product on normalised vectors: the cosine)."""

    def __init__(
        self,
        dim: int,
        *,
        lists: int = 1,
        sample: np.ndarray | None = None,
        probe: int = 32,
        threads: int = 1,
    ) -> None:
        """One exact list, or `lists` lists fitted on the rows of `sample` (with `threads`)."""
        self.dim = dim
        self.probe = probe
        self._lock = ReadWriteLock()
        self._rare: faiss.IndexIVFScalarQuantizer | None = None
        self.rare_below = -1.0
        if lists == 1:
            self._main = _exact_list(dim)
            return
        if sample is None or len(sample) < lists:
            raise ValueError(f"{lists} lists need a sample of at least {lists} tokens")
        faiss.omp_set_num_threads(threads)
        x = np.ascontiguousarray(sample, np.float32)
        quantizer = faiss.IndexFlatIP(dim)
        self._main = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        self._main.own_fields = True  # the quantizer lives as long as the lists
        quantizer.this.disown()  # type: ignore[attr-defined]
        self._main.cp.niter = KMEANS_ROUNDS
        self._main.cp.spherical = True  # unit centroids: a token goes to the closest by cosine
        self._main.train(x)
        self._main.set_direct_map_type(HASHTABLE)
        self._main.nprobe = min(probe, lists)
        self._rare = _exact_list(dim)
        self.rare_below = float(np.quantile(self._closeness(x), RARE_SHARE))

    @classmethod
    def load(cls, path: Path, dim: int, *, probe: int = 32) -> TokenLists:
        """Lists saved by save(); ValueError when the file holds something else."""
        with path.open("rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) != len(MAGIC) + 8 or not head.startswith(MAGIC):
                raise ValueError(f"{path} holds no token lists")
            (rare_below,) = struct.unpack("<d", head[len(MAGIC) :])
            reader = faiss.PyCallbackIOReader(f.read)  # type: ignore[attr-defined]
            main, rare = (_token_ivf(faiss.read_index(reader), dim) for _ in range(2))
        self = cls.__new__(cls)
        self.dim, self.probe, self._lock = dim, probe, ReadWriteLock()
        self._main, self._rare, self.rare_below = main, rare, rare_below
        main.nprobe = min(probe, main.nlist)
        return self

    def _closeness(self, x: np.ndarray) -> np.ndarray:
        """Each row's cosine with its closest centroid."""
        sims, _ = self._main.quantizer.search(x, 1)
        return np.asarray(sims[:, 0])

    @property
    def lists(self) -> int:
        return int(self._main.nlist)

    def __len__(self) -> int:
        return int(self._main.ntotal) + (0 if self._rare is None else int(self._rare.ntotal))

    def add(self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1) -> None:
        """Add tokens (keys not held yet); threads: faiss's threads for this call."""
        if len(keys) == 0:
            return
        faiss.omp_set_num_threads(threads)
        x = np.ascontiguousarray(vectors, np.float32)
        ids = np.ascontiguousarray(keys, np.int64)
        rare = None if self._rare is None else self._closeness(x) < self.rare_below
        with self._lock.writing():
            if rare is None or self._rare is None:
                self._main.add_with_ids(x, ids)
                return
            if (~rare).any():
                self._main.add_with_ids(x[~rare], ids[~rare])
            if rare.any():
                self._rare.add_with_ids(x[rare], ids[rare])

    def remove(self, keys: np.ndarray) -> None:
        if len(keys) == 0:
            return
        faiss.omp_set_num_threads(1)
        sel = faiss.IDSelectorArray(np.ascontiguousarray(keys, np.int64))
        with self._lock.writing():
            self._main.remove_ids(sel)
            if self._rare is not None:
                self._rare.remove_ids(sel)

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Keys of the (about) k tokens nearest q in the probed lists and the rare tokens,
        best first; only keys in `allowed` when given."""
        faiss.omp_set_num_threads(1)
        x = np.ascontiguousarray(q, np.float32).reshape(1, -1)
        k = max(1, k)
        main = rare = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
            main = faiss.SearchParametersIVF(sel=sel, nprobe=self._main.nprobe)  # type: ignore[call-arg]
            rare = faiss.SearchParametersIVF(sel=sel, nprobe=1)  # type: ignore[call-arg]
        with self._lock.reading():
            sims, ids = self._main.search(x, k, params=main)
            if self._rare is not None and self._rare.ntotal:
                rsims, rids = self._rare.search(x, k, params=rare)
                sims, ids = np.hstack([sims, rsims]), np.hstack([ids, rids])
        order = np.argsort(-sims[0], kind="stable")[:k]
        found = ids[0][order]
        return found[found >= 0]

    def agrees(self, keys: np.ndarray, vectors: np.ndarray) -> bool:
        """Whether the tokens held under these keys are these vectors (to the codes'
        precision): a file saved by another memory would hold other tokens under its keys."""
        with self._lock.reading():
            for key, vec in zip(keys.tolist(), vectors, strict=True):
                held = None
                for ivf in (self._main, self._rare):
                    if ivf is not None and held is None:
                        with contextlib.suppress(RuntimeError):  # not in this one
                            held = ivf.reconstruct(int(key))
                if held is None or float(np.dot(held, vec)) < 0.9 * float(np.dot(vec, vec)):
                    return False
        return True

    def keys(self) -> np.ndarray:
        """Every key held (for checking a loaded file against the store)."""
        with self._lock.reading():
            parts = [_list_ids(self._main)]
            if self._rare is not None:
                parts.append(_list_ids(self._rare))
        return np.concatenate(parts)

    def save(self, path: Path) -> None:
        """Write the lists to `path`: MAGIC, the rare tokens' bound, then both faiss indexes."""
        if self._rare is None:
            raise ValueError("unfitted lists are not saved")
        with self._lock.reading(), path.open("wb") as f:
            f.write(MAGIC + struct.pack("<d", self.rare_below))
            writer = faiss.PyCallbackIOWriter(f.write)  # type: ignore[attr-defined]
            faiss.write_index(self._main, writer)
            faiss.write_index(self._rare, writer)


def _token_ivf(index: object, dim: int) -> faiss.IndexIVFScalarQuantizer:
    """A loaded index, checked to be token lists of `dim` dimensions."""
    if not isinstance(index, faiss.IndexIVFScalarQuantizer) or index.d != dim:
        raise ValueError(f"no token lists of {dim} dimensions")
    if index.direct_map.type != HASHTABLE:
        index.set_direct_map_type(HASHTABLE)
    return index


def _exact_list(dim: int) -> faiss.IndexIVFScalarQuantizer:
    """An inverted file of one list of float16 codes: every token scanned, exactly (they are
    stored as float16), found and removed by key at once."""
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.zeros((1, dim), np.float32))
    ivf = faiss.IndexIVFScalarQuantizer(
        quantizer, dim, 1, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
    )
    ivf.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]
    ivf.train(np.zeros((1, dim), np.float32))
    ivf.set_direct_map_type(HASHTABLE)
    return ivf


def _list_ids(ivf: faiss.IndexIVFScalarQuantizer) -> np.ndarray:
    invlists = ivf.invlists
    assert invlists is not None
    parts = [np.zeros(0, np.int64)]
    for c in range(ivf.nlist):
        size = invlists.list_size(c)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(c), size).copy())
    return np.concatenate(parts)


def lists_for(tokens: int) -> int:
    """Lists fitted for this many tokens: about their square root, within bounds."""
    return int(np.clip(round(tokens**0.5), LISTS_MIN, LISTS_MAX))
