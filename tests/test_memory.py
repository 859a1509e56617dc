"""MemoryStore: persistence, idempotence, the per-stream bound, crashes and concurrent readers."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from livesense.config import MemorySettings
from livesense.engines.text import shared_text_embedder
from livesense.errors import LivesenseError
from livesense.memory import index as index_module
from livesense.memory.consolidate import merge_lex, summarise_transcripts
from livesense.memory.store import MemoryStore
from livesense.records import Evidence, OcrLine, SnippetRecord, Word

# A writer that reports each index once add() returned, until it is killed.
WRITER = """
import sys, numpy as np
from pathlib import Path
from livesense.memory.consolidate import merge_lex, summarise_transcripts
from livesense.memory.store import MemoryStore
from livesense.records import Evidence, OcrLine, SnippetRecord
store = MemoryStore(Path(sys.argv[1]))
rng = np.random.default_rng(0)
for i in range(100000):
    tok = rng.standard_normal((2, 384)).astype(np.float32)
    tok /= np.linalg.norm(tok, axis=1, keepdims=True)
    ocr = [OcrLine(f"K{i}", (0, 0, 9, 9), 1.0, 2.0 * i)]
    ev = Evidence(transcript=f"moment number {i}", ocr=ocr)
    store.add(SnippetRecord("cam", i, 2.0 * i, 2.0 * i + 2, tok, ["speech", "text"],
                            [2.0 * i, 2.0 * i], ev), keyframe=b"\\xff\\xd8" + bytes(3000))
    print(i, flush=True)
"""

# A reader in its own process: searches until it sees the code given, timing every query.
READER = """
import json, sys, time
from pathlib import Path
from livesense.memory.consolidate import merge_lex, summarise_transcripts
from livesense.memory.store import MemoryStore
store = MemoryStore(Path(sys.argv[1]), readonly=True)
store.search("warm up")
print("ready", flush=True)
times, found, deadline = [], False, time.time() + 60
while not found and time.time() < deadline:
    t = time.perf_counter()
    hits = store.search(sys.argv[2], top_k=1)
    times.append(time.perf_counter() - t)
    found = bool(hits) and sys.argv[2] in hits[0].evidence.ocr_texts()
print(json.dumps({"found": found, "queries": len(times), "max_s": max(times)}), flush=True)
"""


def check_text_index(db_path: Path) -> None:
    """The FTS5 tables are sound and hold exactly the words of the stored rows, no more."""
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO fts(fts) VALUES ('integrity-check')")
    db.execute("INSERT INTO tri(tri) VALUES ('integrity-check')")
    db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, fts, row)")
    rows = db.execute("SELECT norm, skey FROM records")  # words, and the stream's key
    expected = Counter(w for norm, skey in rows for w in {*norm.split(), skey})
    assert dict(db.execute("SELECT term, doc FROM temp.vocab")) == dict(expected)
    db.close()


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="JPEG")
    return buf.getvalue()


def moment(
    i: int, text: str, ocr: list[str], tokens: np.ndarray, stream: str = "cam1"
) -> SnippetRecord:
    start = 2.0 * i
    return SnippetRecord(
        stream=stream,
        index=i,
        start=start,
        end=start + 2.0,
        tokens=tokens,
        token_modalities=["speech", "text"][: len(tokens)],
        token_times=[start + 1.0, start + 0.5][: len(tokens)],
        evidence=Evidence(
            transcript=text,
            words=[
                Word(w, start + 0.3 * j, start + 0.3 * j + 0.3) for j, w in enumerate(text.split())
            ],
            ocr=[OcrLine(o, (4.0, 5.0, 120.0, 30.0), 0.9, start + 0.5) for o in ocr],
            events={"speech": 0.8},
            faces=1,
        ),
        wall=1_700_000_000.0,
    )


def embedded(i: int, text: str, ocr: list[str], stream: str = "cam1") -> SnippetRecord:
    return moment(i, text, ocr, shared_text_embedder().embed([text, " ".join(ocr)]), stream)


def test_round_trip_survives_close_and_reopen(tmp_path: Path) -> None:
    root = tmp_path / "mem"
    rec = embedded(0, "The next train to Rome leaves from platform nine.", ["PLATFORM9"])
    other = embedded(1, "The cafe is open until eight.", ["CAFE"])
    frame = jpeg((200, 30, 30))
    with MemoryStore(root) as store:
        store.add(rec, keyframe=frame)
        store.add(other)
    with MemoryStore(root) as store:
        got = store.get("cam1", 0)
        assert got is not None
        assert got.evidence.transcript == rec.evidence.transcript
        assert got.evidence.words == rec.evidence.words
        assert got.evidence.ocr == rec.evidence.ocr
        assert got.evidence.events == {"speech": 0.8} and got.evidence.faces == 1
        assert got.evidence.keyframe == "cam1/0.jpg"
        assert np.allclose(got.tokens, rec.tokens, atol=2e-3)
        assert got.token_modalities == ["speech", "text"] and got.token_times == [1.0, 0.5]
        assert (got.start, got.end, got.wall, got.count, got.tier) == (0.0, 2.0, 1.7e9, 1, "recent")
        path = store.keyframe_path("cam1", 0)
        assert path == root / "keyframes" / "cam1" / "0.jpg" and path.read_bytes() == frame
        assert store.keyframe_path("cam1", 1) is None
        hits = store.search("platform 9")
        assert (hits[0].index, hits[0].evidence.keyframe) == (0, "cam1/0.jpg")
        assert store.streams() == [
            {"stream": "cam1", "records": 2, "start": 0.0, "end": 4.0, "snippets": 2}
        ]


def test_re_adding_is_idempotent(tmp_path: Path) -> None:
    rec = embedded(3, "Mind the gap.", ["EXIT"])
    with MemoryStore(tmp_path) as store:
        store.add(rec)
        store.add(rec)
        assert store.count() == 1 and store.count("cam1") == 1
    with MemoryStore(tmp_path) as store:
        store.add(rec)
        assert store.count() == 1


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with MemoryStore(tmp_path), pytest.raises(LivesenseError, match="already writing"):
        MemoryStore(tmp_path)
    with MemoryStore(tmp_path, readonly=True) as reader:  # readers are always welcome
        assert reader.count() == 0


def test_bound_holds_and_consolidated_words_stay_searchable(tmp_path: Path) -> None:
    bound, n = 16, 160
    settings = MemorySettings(max_records_per_stream=bound, consolidate_batch=8)
    topics = [
        "The train to the airport is boarding now",
        "Fresh coffee and pastries at the kiosk",
        "Please keep your luggage with you",
        "The north stairs are closed for cleaning",
    ]
    words = [f"vel{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(n)]  # distinct words
    codes = [f"Q{100 + i}" for i in range(n)]  # distinct codes
    texts = [f"{topics[(i // 10) % 4]}, says {words[i]}." for i in range(n)]
    emb = shared_text_embedder()
    speech, shown = emb.embed(texts), emb.embed([f"GATE {c}" for c in codes])
    reader = None
    with MemoryStore(tmp_path, settings) as store:
        for i in range(n):
            store.add(
                moment(i, texts[i], [f"GATE{codes[i]}"], np.stack([speech[i], shown[i]])),
                keyframe=jpeg((i, 0, 0)),
            )
            assert store.count("cam1") <= bound
            if i == 40:
                reader = MemoryStore(tmp_path, settings, readonly=True)
        assert store.generation > 0
        for i in range(0, n, 3):  # every third word, every code
            for q in (words[i], codes[i]):
                hit = store.search(q, top_k=1)[0]
                assert hit.start <= 2.0 * i < hit.end, (q, hit.start, hit.end)
        for i in range(1, n, 3):
            hit = store.search(codes[i], top_k=1)[0]
            assert hit.start <= 2.0 * i < hit.end, (codes[i], hit.start, hit.end)
        info = store.streams()[0]
        assert info["records"] <= bound and info["snippets"] == n
        assert (info["start"], info["end"]) == (0.0, 2.0 * n)
        oldest = store.get("cam1", 0)
        assert oldest is not None and oldest.tier == "consolidated" and oldest.count > 1
        assert len(oldest.tokens) == 2  # one normalised mean per modality
        assert np.allclose(np.linalg.norm(oldest.tokens, axis=1), 1.0, atol=1e-2)
        keyframes = list((tmp_path / "keyframes" / "cam1").glob("*.jpg"))
        assert len(keyframes) <= bound  # the unused ones were deleted
        path = store.keyframe_path("cam1", 0)
        assert path is not None and path.is_file()
        # a reader opened mid-way catches up with the removals and the merged rows
        assert reader is not None
        reader.refresh()
        assert len(reader._index) == store.count() <= bound
        hit = reader.search(codes[5], top_k=1)[0]
        assert hit.start <= 10.0 < hit.end
        reader.close()
    check_text_index(tmp_path / "memory.db")  # merged-away rows left the text index too
    with MemoryStore(tmp_path, settings) as store:  # still bounded after a reopen
        assert store.count("cam1") <= bound


def test_sigkill_loses_at_most_the_moment_in_flight(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    reported: list[int] = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) >= 60:
            break
    os.kill(child.pid, signal.SIGKILL)
    reported += [int(line) for line in child.stdout.read().split()]
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    db = sqlite3.connect(tmp_path / "memory.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    check_text_index(tmp_path / "memory.db")
    with MemoryStore(tmp_path) as store:
        assert reported == list(range(len(reported)))
        assert len(reported) <= store.count() <= len(reported) + 1
        for i in reported:
            rec = store.get("cam", i)
            assert rec is not None and rec.evidence.ocr_texts() == [f"K{i}"]
        last = reported[-1]
        assert store.search(f"K{last}", top_k=1)[0].index == last
        assert store.keyframe_path("cam", last) is not None
        store.add(embedded(last + 5, "after the crash", ["OK"], stream="cam"))
        assert store.count() >= len(reported) + 1


def test_reader_process_sees_new_moments_and_is_never_blocked(tmp_path: Path) -> None:
    emb = shared_text_embedder()
    speech = emb.embed(["A message on the board."])[0]
    with MemoryStore(tmp_path) as store:
        store.add(moment(0, "A message on the board.", ["QX0"], np.stack([speech, speech])))
        reader = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(READER), str(tmp_path), "QX39"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        # A long write transaction held by another connection, while the reader queries.
        hold = threading.Event()

        def long_write() -> None:
            raw = sqlite3.connect(tmp_path / "memory.db", isolation_level=None, timeout=10)
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('probe', '1')")
            hold.set()
            time.sleep(1.5)
            raw.execute("COMMIT")
            raw.close()

        writer = threading.Thread(target=long_write)
        writer.start()
        hold.wait(5)
        for i in range(1, 40):  # these wait for the long transaction, then stream in
            store.add(
                moment(i, f"A message on the board {i}.", [f"QX{i}"], np.stack([speech, speech]))
            )
            time.sleep(0.02)
        writer.join()
        out, _ = reader.communicate(timeout=90)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["found"], result
    assert result["queries"] >= 2 and result["max_s"] < 1.0, result


def test_merged_text_keeps_every_word_past_its_limits() -> None:
    lexes = [f"Gate change number {i} to gate{i} CODE-{i}\nDEPARTURES" for i in range(60)]
    merged = merge_lex(lexes, limit=300)
    words = set(merged.split())
    assert all({f"gate{i}", f"CODE-{i}"} <= words for i in range(60))
    assert merged.count("DEPARTURES") == 1 and len(merged) < sum(map(len, lexes)) / 2
    said = summarise_transcripts(["Mind the gap. Mind the gap.", "The train is late. Mind it."])
    assert said == "Mind the gap. The train is late. Mind it."
    assert len(summarise_transcripts([f"Sentence {i} is here." for i in range(100)], 120)) <= 120


def test_reader_handles_of_finished_threads_are_freed(sample_memory: Path) -> None:
    """API worker threads come and go; their read connections must not pile up."""
    store = MemoryStore(sample_memory, readonly=True)
    try:
        store.search("Rome")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(40):
            t = threading.Thread(target=store.search, args=("Rome",))
            t.start()
            t.join()
        assert len(os.listdir("/proc/self/fd")) - before < 10  # was +80 (2 per thread)
    finally:
        store.close()


def test_vector_lists_saved_on_close_are_loaded_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FIT_AT the writer saves the fitted lists on close; opening the memory loads them
    instead of fitting, with the same results, and moments added since are found."""
    monkeypatch.setattr(index_module, "FIT_AT", 256)  # a small store gets fitted lists
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((151, 2, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=2, keepdims=True)
    root = tmp_path / "mem"
    with MemoryStore(root) as store:
        for i in range(150):
            store.add(moment(i, f"said {i}", [], vecs[i], stream=f"cam{i % 3}"))
        store.index.maybe_fit(wait=True)
        assert store.index.lists > 1 and store.index.loaded_from is None
        before = [store.index.search(v[1], top_k=5) for v in vecs[:150:10]]
    assert (root / "vectors.faiss").is_file()
    with MemoryStore(root, readonly=True) as reader:
        assert reader.index.loaded_from == root / "vectors.faiss"
        assert [reader.index.search(v[1], top_k=5) for v in vecs[:150:10]] == before
    with MemoryStore(root) as store:
        assert store.index.loaded_from == root / "vectors.faiss"
        store.add(moment(150, "said 150", [], vecs[150], stream="cam0"))
        assert store.index.search(vecs[150][0], top_k=1)[0][1] > 0.99
