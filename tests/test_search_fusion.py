"""The fast paths of search give the same answers as the plain ones they replace."""

from __future__ import annotations

import random
import sqlite3

import numpy as np
import pytest

from livesense.engines import text as text_module
from livesense.engines.text import MAX_TOKENS, TextEmbedder, shared_text_embedder
from livesense.memory import search
from livesense.memory.index import VectorIndex, matvec, to_float32
from livesense.memory.lexical import match_terms, query_terms
from livesense.memory.text_tables import TEXT_RECORDS, TEXT_TABLES, index_text, text_columns

WORDS = [
    "PLATFORM9", "PLATFORM19", "ArrivalsfromRome", "B-52", "GATEB520", "gateq109", "Rome", "9",
    "19", "platform", "the", "A17", "desk", "café", "2:30", "b52x", "x9y", "Milan",
    "departuresmilan", "12B52", "q109", "nine",
]  # fmt: skip
QUERIES = [*WORDS, "B52", "52", "rome", "platform 9", "gate b-52", "cafe 2:30", "milan q109"]


def text_db(texts: list[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.executescript(TEXT_RECORDS + TEXT_TABLES)
    for rid, lex in enumerate(texts, 1):
        norm, skey = text_columns(lex, "cam1")
        conn.execute(
            "INSERT INTO records(id, lex, norm, skey) VALUES (?, ?, ?, ?)", (rid, lex, norm, skey)
        )
        index_text(conn, rid, lex, norm, skey)
    return conn


def test_fused_scores_equal_matching_every_text_in_python() -> None:
    """Fusing from one read of the texts gives the ranking of scoring every text in full."""
    rng = random.Random(5)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(0, 6))) for _ in range(300)]
    conn = text_db(texts)
    norms = {rid: str(n) for rid, n in conn.execute("SELECT id, norm FROM records")}
    dense = {rid: rng.uniform(-0.1, 0.9) for rid in norms}
    checked = 0
    for _ in range(200):
        q = " ".join(rng.sample(QUERIES, rng.randint(1, 3)))
        terms = query_terms(q)
        weights = [rng.uniform(0.5, 5.0) for _ in terms] if len(terms) > 1 else []
        texts = search.sql_texts(conn)
        got = search.fuse_candidates(texts, terms, weights, dense, set(norms), len(norms))
        want = sorted(
            (-search.hybrid_score(dense[r], *match_terms(terms, n, weights or None)), r)
            for r, n in norms.items()
        )
        assert got == [(r, -s) for s, r in want], q
        checked += sum(1 for n in norms.values() if match_terms(terms, n)[0] > 0)
    assert checked > 1000  # many texts held some term
    # '9' inside '19' and 'q109' inside 'gateq109' vs 'b52' inside 'b520': the digit rule
    glued = search.sql_texts(text_db(["GATEB520", "gateq109", "PLATFORM19"]))
    one = {1: 0.0, 2: 0.0, 3: 0.0}
    scores = dict(search.fuse_candidates(glued, query_terms("b52"), [], one, set(one), 3))
    assert scores[1] == 0.0  # 'b52' only inside 'b520': the number goes on
    scores = dict(search.fuse_candidates(glued, query_terms("q109"), [], one, set(one), 3))
    assert scores[2] == search.hybrid_score(0.0, 0.6, True)
    # a candidate without a stored row is left out
    rome = search.fuse_candidates(glued, query_terms("rome"), [], {9: 0.9}, {9}, 5)
    assert [r for r, _ in rome] == []


def test_fusing_from_the_index_texts_equals_reading_them() -> None:
    """The in-memory index holds each record's normalised text: fusing from it gives what
    reading the texts from SQLite gives, and removed records are left out alike."""
    rng = random.Random(6)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(0, 6))) for _ in range(200)]
    conn = text_db(texts)
    index = VectorIndex(4)
    for rid, norm in conn.execute("SELECT id, norm FROM records"):
        index.add(rid, np.ones((1, 4), np.float32), "cam1", 0.0, 1.0, norm)
    gone = set(range(1, 201, 7))
    index.remove(gone)
    conn.executemany("DELETE FROM records WHERE id = ?", [(r,) for r in gone])
    dense = {rid: rng.uniform(-0.1, 0.9) for rid in range(1, 201)}
    for _ in range(50):
        terms = query_terms(" ".join(rng.sample(QUERIES, rng.randint(1, 3))))
        want = search.fuse_candidates(search.sql_texts(conn), terms, [], dense, set(dense), 10)
        got = search.fuse_candidates(index.texts, terms, [], dense, set(dense), 10)
        assert got == want and not {r for r, _ in got} & gone


@pytest.mark.parametrize("ids", [[1, 2, 3, 4], [4, 2, 9, 1]])
def test_index_lookups_by_id_in_any_order(ids: list[int]) -> None:
    """Ids appended in order are found by binary search, others by the dict: the same."""
    index = VectorIndex(4)
    for k, rid in enumerate(ids):
        tokens = np.eye(4, dtype=np.float32)[k : k + 1]
        index.add(rid, tokens, f"cam{k % 2}", 2.0 * k, 2.0 * k + 2, f"text {rid}")
    index.remove([ids[1]])
    asked = [ids[3], 77, ids[1], ids[0]]
    assert index.texts(asked) == [(ids[3], f"text {ids[3]}"), (ids[0], f"text {ids[0]}")]
    assert index.select(asked, stream="cam1") == [ids[3]]
    assert index.select(asked, start=0.0, end=1.0) == [ids[0]]
    assert index.scores(np.eye(4, dtype=np.float32)[3], asked) == {ids[3]: 1.0, ids[0]: 0.0}


def test_document_frequencies_are_reused_while_the_memory_changes_little() -> None:
    conn = text_db(["rome desk", "rome", "milan"])
    freqs = search.DocFreqs()
    assert freqs.get(conn, {"rome", "milan", "paris"}, 3) == {"rome": 2, "milan": 1, "paris": 0}
    conn.execute("INSERT INTO records(id, lex, norm, skey) VALUES (4, 'rome', 'rome', 'x')")
    index_text(conn, 4, "rome", "rome", "x")
    assert freqs.get(conn, {"rome"}, 3) == {"rome": 2}  # the same memory size: kept
    assert freqs.get(conn, {"rome"}, 4) == {"rome": 3}  # a third bigger: looked up again


def test_lookup_weights_equal_the_vocabulary_ones() -> None:
    """A word's complete lookup gives its document frequency exactly; one term needs none."""
    rng = random.Random(8)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 5))) for _ in range(600)]
    conn = text_db(texts)
    n = len(texts)
    # a scope spanning every row looks the same rows up but takes every df from the vocabulary
    everything = search.Scope(None, 0, n + 1, lambda ids: ids)
    for q in ("Rome desk", "platform 9 A17", "nine café Milan", "B52 gate Rome", "q109 x9y"):
        terms = query_terms(q)
        ids, weights = search.lexical_candidates(conn, terms, n)
        want_ids, want = search.lexical_candidates(conn, terms, n, scope=everything)
        assert ids == want_ids and ids, q
        assert weights == want, q
    assert search.lexical_candidates(conn, query_terms("Rome"), n)[1] == [1.0]


def test_query_vectors_are_cached_by_exact_text(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = TextEmbedder(batch=False)
    monkeypatch.setattr(text_module, "QUERY_CACHE", 2)
    first = emb.embed_query("gate B52")
    assert not first.flags.writeable
    assert np.allclose(first, shared_text_embedder().embed(["gate B52"])[0], atol=1e-6)
    assert emb.embed_query("gate B52") is first
    other = emb.embed_query("gate b52")  # another text, another entry
    assert other is not first
    emb.embed_query("platform 9")  # a third text: the least recently used one goes
    assert emb.embed_query("gate b52") is other
    again = emb.embed_query("gate B52")
    assert again is not first and np.array_equal(again, first)


def test_a_short_query_runs_unpadded_with_the_padded_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emb = TextEmbedder(batch=False)
    widths: list[int] = []
    real_pool = emb._pool

    def pool(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        widths.append(ids.shape[1])
        return real_pool(ids, mask)

    monkeypatch.setattr(emb, "_pool", pool)
    short = emb.embed_now(["where is gate B52"])[0]
    assert widths == [len(emb.tokenizer.encode("where is gate B52").ids)] and widths[0] <= 8
    enc = emb.tokenizer.encode("where is gate B52").ids
    ids = np.zeros((1, MAX_TOKENS), np.int64)
    mask = np.zeros((1, MAX_TOKENS), np.int64)
    ids[0, : len(enc)] = enc
    mask[0, : len(enc)] = 1
    padded = real_pool(ids, mask)[0]
    assert float(short @ padded) > 0.9999


def test_index_arithmetic_is_exact() -> None:
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    assert np.array_equal(to_float32(every), every.astype(np.float32), equal_nan=True)
    rng = np.random.default_rng(0)
    m = rng.standard_normal((1000, 96)).astype(np.float32)
    q = rng.standard_normal(96).astype(np.float32)
    assert np.allclose(matvec(m, q), m @ q, atol=1e-4)
    assert matvec(m[:0], q).shape == (0,)
