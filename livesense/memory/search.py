"""Hybrid scoring: dense (embedding) and lexical (FTS5 words + trigrams) evidence combined.

For a query q and a stored moment m:

    cos(m)      = max over m's tokens of cos(embed(q), token)
    dense(m)    = clip((cos(m) - DENSE_FLOOR) / (DENSE_CEIL - DENSE_FLOOR), 0, 1)
                  (MiniLM puts unrelated text at cos 0..0.2 and paraphrases at 0.35..0.8)
    credit(t,m) = 1 if q's content word t is in m as a word, phrase or code,
                  SUBSTRING_CREDIT if only inside a longer glued word, else 0
    lexical(m)  = sum_t idf(t) * credit(t, m) / sum_t idf(t)
                  idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)), BM25's idf, df from FTS5
    score(m)    = DENSE_WEIGHT * dense + LEXICAL_WEIGHT * lexical
                  + ALL_TERMS_BONUS if every content word of q was found

The score lies in [0, 1]. Lexical is BM25 with term frequency saturated at one occurrence and
no length normalisation (a moment is a sentence or two of speech and a few lines of text).
Ranking all matches of a common word by FTS5's bm25() grows with the memory, so
FTS5 finds candidates (the newest matches of all words together, and of each word, as a word
or inside glued text) and its vocabulary gives the document frequencies. A search within one
stream (every search of a scoped token) counts N and df in that stream alone, so that its
scores never depend on what other streams hold. Standing queries
(memory.watch) use the same formula with uniform idf: one new record has no corpus to weigh
words against.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from livesense.errors import QueryError
from livesense.memory.index import VectorIndex
from livesense.memory.lexical import (
    Term,
    coverage,
    fts_all,
    fts_term,
    query_terms,
    stream_key,
    term_credits,
    trigram_term,
)

DENSE_FLOOR = 0.15
DENSE_CEIL = 0.75
DENSE_WEIGHT = 0.55
LEXICAL_WEIGHT = 0.35
ALL_TERMS_BONUS = 0.10

DENSE_CANDIDATES = 64  # dense candidates taken into fusion (at least 4 x top_k)
LEXICAL_CANDIDATES = 200  # newest rows matching all words taken into fusion...
TERM_CANDIDATES = 100  # ...and newest rows matching each word
MAX_LEXICAL_TERMS = 8  # words looked up one by one (the rest only count in the score)

MAX_QUERY = 1000
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_stream(stream: str) -> str:
    """A valid stream id (letters, digits, '_', '.', '-'; 1 to 64), or QueryError."""
    if not isinstance(stream, str) or not _STREAM_ID.fullmatch(stream) or set(stream) == {"."}:
        raise QueryError(
            f"{str(stream)[:70]!r} is not a valid stream id: use 1 to 64 letters, digits, "
            "'_', '.' or '-'."
        )
    return stream


def check_query(query: str) -> str:
    """The stripped query, or QueryError when it is empty or longer than MAX_QUERY."""
    q = (query or "").strip()
    if not q:
        raise QueryError("The query is empty; say what to look for.")
    if len(q) > MAX_QUERY:
        raise QueryError(f"The query is {len(q)} characters long; at most {MAX_QUERY} are allowed.")
    return q


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One checked search as the stores rank it: the query's text and embedding, the
    filters (stream, time span) and how many hits to return."""

    text: str
    vector: np.ndarray
    stream: str | None = None
    start: float | None = None
    end: float | None = None
    top_k: int = 5

    @property
    def dense_candidates(self) -> int:
        """How many nearest records by embedding go into fusion."""
        return max(DENSE_CANDIDATES, 4 * self.top_k)


def hybrid_score(dense: float, lexical: float, every: bool) -> float:
    """The documented mix of dense similarity (a raw cosine) and lexical coverage, in [0, 1]."""
    d = min(max((dense - DENSE_FLOOR) / (DENSE_CEIL - DENSE_FLOOR), 0.0), 1.0)
    lex = min(max(lexical, 0.0), 1.0)
    return DENSE_WEIGHT * d + LEXICAL_WEIGHT * lex + (ALL_TERMS_BONUS if every else 0.0)


def idf(df: int, n: int) -> float:
    """BM25's inverse document frequency (always positive)."""
    n = max(n, df, 1)
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def _newest(
    conn: sqlite3.Connection,
    table: str,
    expr: str,
    limit: int,
    scope: Scope | None = None,
) -> list[int]:
    """Row ids of the newest `limit` rows matching an FTS5 expression, within the scope.

    Cheap: no ranking; rows come newest first, from the scope's stream and id span only, and
    the scan stops at the limit.
    """
    column = "norm" if table == "fts" else "lex"
    match = f"{{{column}}} : ({expr})"
    if scope is None:
        sql = f"SELECT rowid FROM {table} WHERE {table} MATCH ? ORDER BY rowid DESC LIMIT ?"
        try:
            return [int(r[0]) for r in conn.execute(sql, (match, limit))]
        except sqlite3.OperationalError as e:
            raise QueryError(f"The query could not be searched as text ({e}).") from None
    if scope.stream is not None:
        match = f'{{skey}} : "{stream_key(scope.stream)}" AND {match}'
    out: list[int] = []
    sql = (
        f"SELECT rowid FROM {table} WHERE {table} MATCH ? AND rowid BETWEEN ? AND ? "
        "ORDER BY rowid DESC"
    )
    try:
        cur = conn.execute(sql, (match, scope.lo, scope.hi))
        while len(out) < limit:
            chunk = cur.fetchmany(1024)
            if not chunk:
                break
            out.extend(scope.keep([int(r[0]) for r in chunk]))
        cur.close()
    except sqlite3.OperationalError as e:
        raise QueryError(f"The query could not be searched as text ({e}).") from None
    return out[:limit]


def _doc_freq(
    conn: sqlite3.Connection, words: set[str], scope: Scope | None = None
) -> dict[str, int]:
    """Rows holding each word: in the whole table (scope None, FTS5's vocabulary), or in the
    scope's stream only (its rows found by their stream key, then checked exactly)."""
    if not words:
        return {}
    if scope is not None and scope.stream is not None:
        key = stream_key(scope.stream)
        out: dict[str, int] = {}
        for w in words:
            match = f'{{skey}} : "{key}" AND {{norm}} : "{w}"'
            try:
                rows = [int(r[0]) for r in conn.execute(SQL_MATCH_FTS, (match,))]
            except sqlite3.OperationalError as e:
                raise QueryError(f"The query could not be searched as text ({e}).") from None
            out[w] = len(scope.in_stream(rows))
        return out
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.fts_vocab USING fts5vocab(main, fts, row)"
    )
    marks = ",".join("?" * len(words))
    sql = f"SELECT term, doc FROM temp.fts_vocab WHERE term IN ({marks})"
    return {str(t): int(d) for t, d in conn.execute(sql, sorted(words))}


SQL_MATCH_FTS = "SELECT rowid FROM fts WHERE fts MATCH ?"


class DocFreqs:
    """Words' document frequencies (in all streams, or in one), kept while the memory (or the
    stream) changes size by under STALE.

    FTS5 counts a word's documents by walking its whole list of rows, where a search engine's
    term dictionary holds the count. A word's idf
    moves little while the corpus changes by a few percent, so a count is reused until then.
    """

    STALE = 0.05
    SIZE = 8192

    def __init__(self) -> None:
        # (stream or None, word) -> (df, n)
        self._seen: OrderedDict[tuple[str | None, str], tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, conn: sqlite3.Connection, words: set[str], n: int, scope: Scope | None = None
    ) -> dict[str, int]:
        """df of each word, in the scope's stream when it names one (n: that stream's size)."""
        stream = scope.stream if scope is not None else None
        out: dict[str, int] = {}
        with self._lock:
            for w in words:
                seen = self._seen.get((stream, w))
                if seen is not None and abs(n - seen[1]) <= self.STALE * max(seen[1], 1):
                    out[w] = seen[0]
                    self._seen.move_to_end((stream, w))
        missing = words - out.keys()
        found = _doc_freq(conn, missing, scope if stream is not None else None)
        with self._lock:
            for w in missing:
                out[w] = found.get(w, 0)
                self._seen[(stream, w)] = (out[w], n)
                self._seen.move_to_end((stream, w))
            while len(self._seen) > self.SIZE:
                self._seen.popitem(last=False)
        return out


def _all(ids: list[int]) -> list[int]:
    return ids


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a filtered search looks: one stream (or all), the id span of the records that
    pass the filters, and the exact filter over ids. With a stream, also that stream's size
    and the exact filter of its records (whatever their time): the lexical statistics of a
    search within a stream come from that stream alone. `whole`: no time filter."""

    stream: str | None
    lo: int
    hi: int
    keep: Callable[[list[int]], list[int]]
    n: int = 0
    in_stream: Callable[[list[int]], list[int]] = _all
    whole: bool = False


def lexical_candidates(
    conn: sqlite3.Connection,
    terms: list[Term],
    n: int,
    *,
    scope: Scope | None = None,
    doc_freqs: DocFreqs | None = None,
) -> tuple[set[int], list[float]]:
    """(row ids worth scoring, idf weight of each term) for the lexical side. A word's
    trigram (inside glued text) matches are looked up only when its word matches are few: a
    common word gains nothing from them. With one term no weight is looked up: [1.0] (a lone
    term's weight cancels out of the coverage). Within a stream, N and df are the stream's."""
    ids: set[int] = set()
    per_stream = scope is not None and scope.stream is not None
    if scope is not None and scope.stream is not None:
        n = scope.n
    exact = scope is None or (per_stream and scope.whole)  # a word's rows in scope: its df
    if len(terms) > 1:
        ids.update(_newest(conn, "fts", fts_all(terms) or "", LEXICAL_CANDIDATES, scope))
    inner_hits: dict[str, int] = {}
    exact_df: dict[str, int] = {}
    for t in terms[:MAX_LEXICAL_TERMS]:
        as_word = _newest(conn, "fts", fts_term(t), TERM_CANDIDATES, scope)
        ids.update(as_word)
        if exact and len(t.parts) == 1 and len(as_word) < TERM_CANDIDATES:
            exact_df[t.joined] = len(as_word)  # every row holding the word: its df
        tri = trigram_term(t)
        if tri is not None and len(as_word) < TERM_CANDIDATES:
            found = _newest(conn, "tri", tri, TERM_CANDIDATES, scope)
            inner_hits[t.joined] = len(found)
            ids.update(found)
    if len(terms) == 1:
        return ids, [1.0]
    all_words = {p for t in terms for p in t.parts} | {t.joined for t in terms}
    df = dict(exact_df)
    rest = all_words - exact_df.keys()
    within = scope if per_stream else None
    if doc_freqs is None:
        df.update(_doc_freq(conn, rest, within))
    else:
        df.update(doc_freqs.get(conn, rest, n, within))
    weights = []
    for t in terms:
        d = min(df.get(p, 0) for p in t.parts)
        if len(t.parts) > 1:
            d += df.get(t.joined, 0)
        d = max(d, inner_hits.get(t.joined, 0))  # glued-only words: at least what was seen
        weights.append(idf(d, n))
    return ids, weights


def rank(
    conn: sqlite3.Connection,
    index: VectorIndex,
    q: SearchQuery,
    *,
    texts: Texts | None = None,
    doc_freqs: DocFreqs | None = None,
) -> list[tuple[int, float]]:
    """(row id, hybrid score) of the best moments, highest first, ties by row id. `texts`
    gives candidates' normalised texts (default: read from conn's records table)."""
    stream, start, end = q.stream, q.start, q.end
    terms = query_terms(q.text)
    dense = dict(
        index.search(q.vector, top_k=q.dense_candidates, stream=stream, start=start, end=end)
    )
    lex_ids: set[int] = set()
    weights: list[float] = []
    if terms:
        scope = None
        span = (0, 0)
        if stream is not None or start is not None or end is not None:
            span = index.span(stream=stream, start=start, end=end) or (1, 0)  # (1, 0): none

            def keep(ids: list[int]) -> list[int]:
                return index.select(ids, stream=stream, start=start, end=end)

            def in_stream(ids: list[int]) -> list[int]:
                return index.select(ids, stream=stream)

            scope = Scope(
                stream, span[0], span[1], keep,
                n=index.count(stream) if stream is not None else 0,
                in_stream=in_stream, whole=start is None and end is None,
            )  # fmt: skip
        if span[0] <= span[1]:
            lex_ids, weights = lexical_candidates(
                conn, terms, len(index), scope=scope, doc_freqs=doc_freqs
            )
    missing = [rid for rid in lex_ids if rid not in dense]
    if missing:
        dense.update(index.scores(q.vector, missing))
    candidates = set(dense) | lex_ids
    return fuse_candidates(texts or sql_texts(conn), terms, weights, dense, candidates, q.top_k)


Texts = Callable[[list[int]], Iterable[tuple[int, str]]]
"""(row id, normalised text) of the stored rows among the given ids."""


def sql_texts(conn: sqlite3.Connection) -> Texts:
    """Texts read from a records table with columns id and norm."""

    def read(ids: list[int]) -> Iterable[tuple[int, str]]:
        for k in range(0, len(ids), 900):  # SQLite's parameter limit (999 in old builds)
            chunk = ids[k : k + 900]
            marks = ",".join("?" * len(chunk))
            yield from conn.execute(f"SELECT id, norm FROM records WHERE id IN ({marks})", chunk)

    return read


def fuse_candidates(
    texts: Texts,
    terms: list[Term],
    weights: list[float],
    dense: dict[int, float],
    candidates: set[int],
    top_k: int,
) -> list[tuple[int, float]]:
    """The top_k candidates by hybrid score, from one read of their texts (which also leaves
    out candidates no longer stored). A query's candidates share few patterns of credits, so
    each pattern's coverage is worked out once; the scores are then mixed at once (the same
    arithmetic as hybrid_score, element by element)."""
    w = weights or None
    memo: dict[tuple[float, ...], tuple[float, bool]] = {}
    rids: list[int] = []
    lexical: list[tuple[float, bool]] = []
    for rid, norm in texts(sorted(candidates)):
        credits = tuple(term_credits(terms, norm)) if terms else ()
        lex = memo.get(credits)
        if lex is None:
            every = bool(credits) and all(c > 0 for c in credits)
            lex = memo[credits] = (coverage(list(credits), w) if credits else 0.0, every)
        rids.append(int(rid))
        lexical.append(lex)
    if not rids:
        return []
    d = np.array([dense.get(rid, 0.0) for rid in rids], np.float64)
    d = np.clip((d - DENSE_FLOOR) / (DENSE_CEIL - DENSE_FLOOR), 0.0, 1.0)
    cover = np.clip(np.array([x for x, _ in lexical], np.float64), 0.0, 1.0)
    bonus = np.where([every for _, every in lexical], ALL_TERMS_BONUS, 0.0)
    score = DENSE_WEIGHT * d + LEXICAL_WEIGHT * cover + bonus
    order = np.lexsort((np.array(rids), -score))[:top_k]
    return [(rids[i], float(score[i])) for i in order.tolist()]
