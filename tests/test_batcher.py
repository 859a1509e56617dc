"""The cross-stream batcher: correctness, no delay for a lone stream, fairness, backpressure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from livesense.engines.batcher import BatchDroppedError, Batcher, bucket, groups
from livesense.engines.engine_factory import EngineFactory
from livesense.engines.model_spec import vad_spec
from livesense.engines.vad import SileroVad, vad_runner


class Recorder:
    """A batch function (double every item) that records the batches it was given."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.delay = delay
        self.gate = gate
        self.entered = threading.Event()
        self.threads: set[int] = set()

    def __call__(self, items: list[tuple[str, int]]) -> list[int]:
        self.entered.set()
        self.threads.add(threading.get_ident())
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if any(v < 0 for _, v in items):
            raise ValueError("negative input")
        self.batches.append(list(items))
        return [2 * v for _, v in items]


def test_every_request_gets_its_own_results_in_order() -> None:
    rec = Recorder(delay=0.002)
    b = Batcher("t", rec, max_batch=8, max_delay=0.005)
    try:

        def stream(s: int) -> None:
            for k in range(20):
                items = [(f"s{s}", 100 * s + k * 3 + j) for j in range(1 + k % 3)]
                assert b(items, stream=s) == [2 * v for _, v in items]

        with ThreadPoolExecutor(6) as pool:
            for f in [pool.submit(stream, s) for s in range(6)]:
                f.result()
        sizes = [len(x) for x in rec.batches]
        assert max(sizes) <= 8 and sum(sizes) == 6 * sum(1 + k % 3 for k in range(20))
        assert b.stats.items == sum(sizes) and b.stats.drops == 0
        assert b.stats.as_json()["mean_batch"] > 1.5  # concurrent streams did share batches
        assert b([]) == []
    finally:
        b.close()


def test_a_lone_stream_does_not_wait_for_the_delay() -> None:
    rec = Recorder()
    b = Batcher("lone", rec, max_batch=16, max_delay=0.5)
    try:
        b([("a", 1)], stream="a")
        t0 = time.perf_counter()
        for k in range(5):
            assert b([("a", k)], stream="a") == [2 * k]
        assert time.perf_counter() - t0 < 0.4  # five waits of max_delay would take 2.5 s
        assert rec.threads == {threading.get_ident()}  # run on the caller's own thread
        assert b.stats.inline == 6 and b.stats.items == 6
        # Once a second stream shows up, requests go through the worker and are gathered.
        other = threading.Thread(target=lambda: b([("b", 1)], stream="b"))
        other.start()
        other.join(5)
        assert b([("a", 9)], stream="a") == [18] and b.stats.inline == 6
    finally:
        b.close()


def test_max_delay_gathers_streams_that_are_active() -> None:
    rec = Recorder()
    b = Batcher("gather", rec, max_batch=4, max_delay=0.3)
    try:
        b([("a", 0)], stream="a")
        b([("b", 0)], stream="b")  # two streams active now
        fa = b.submit([("a", 1)], stream="a")
        time.sleep(0.05)  # well inside max_delay: the worker still waits for b
        fb = b.submit([("b", 1)], stream="b")
        assert fa.result(5) == [2] and fb.result(5) == [2]
        assert [("a", 1), ("b", 1)] in rec.batches  # one batch, both streams
    finally:
        b.close()


def test_a_busy_stream_cannot_starve_a_quiet_one() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher("fair", rec, max_batch=4, max_delay=0.0, queue_size=512, stream_queue=512)
    try:
        first = b.submit([("busy", -0)], stream="busy")
        assert rec.entered.wait(5)  # the worker is inside the first batch, held by the gate
        flood = [b.submit([("busy", k)] * 4, stream="busy") for k in range(1, 41)]
        quiet = b.submit([("quiet", 7)], stream="quiet")
        gate.set()
        assert quiet.result(10) == [14]
        assert first.result(10) == [0] and all(f.result(10) for f in flood)
        served_at = next(i for i, batch in enumerate(rec.batches) if ("quiet", 7) in batch)
        assert served_at <= 1  # the next batch after the one running, not after 160 items
        assert all(len(batch) <= 4 for batch in rec.batches)
    finally:
        b.close()


def test_a_full_queue_makes_callers_wait_and_loses_nothing() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher("wait", rec, max_batch=2, max_delay=0.0, queue_size=4, stream_queue=4)
    try:
        running = b.submit([("a", 0)], stream="a")
        assert rec.entered.wait(5)
        queued = [b.submit([("a", k)], stream="a") for k in range(1, 5)]  # fills the queue
        assert b.queued == 4
        late = threading.Thread(target=lambda: b([("a", 5)], stream="a"), daemon=True)
        late.start()
        late.join(0.3)
        assert late.is_alive() and b.queued == 4  # blocked: the bound holds
        with pytest.raises(BatchDroppedError, match="stayed full"):
            b.submit([("b", 9)], stream="b", timeout=0.1)
        gate.set()
        late.join(5)
        assert not late.is_alive()
        assert running.result(5) == [0] and [f.result(5) for f in queued] == [[2], [4], [6], [8]]
        assert b.stats.drops == 1  # only the request that gave up on its timeout
    finally:
        gate.set()
        b.close()


def test_drop_oldest_drops_from_the_busiest_stream_and_counts() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher(
        "oldest",
        rec,
        max_batch=1,
        max_delay=0.0,
        queue_size=4,
        stream_queue=4,
        policy="drop_oldest",
    )
    try:
        b.submit([("a", 0)], stream="a")
        assert rec.entered.wait(5)
        a = [b.submit([("a", k)], stream="a") for k in range(1, 5)]  # queue full, all of a
        newcomer = b.submit([("b", 1)], stream="b")  # a is the busiest: its oldest goes
        with pytest.raises(BatchDroppedError, match="dropped"):
            a[0].result(1)
        assert b.queued == 4 and b.stats.drops == 1
        gate.set()
        assert newcomer.result(5) == [2]
        assert [f.result(5) for f in a[1:]] == [[4], [6], [8]]
    finally:
        gate.set()
        b.close()


def test_drop_newest_refuses_the_new_request() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher(
        "newest",
        rec,
        max_batch=1,
        max_delay=0.0,
        queue_size=2,
        stream_queue=2,
        policy="drop_newest",
    )
    try:
        b.submit([("a", 0)], stream="a")
        assert rec.entered.wait(5)
        kept = [b.submit([("a", k)], stream="a") for k in (1, 2)]
        refused = b.submit([("a", 3), ("a", 4)], stream="a")
        with pytest.raises(BatchDroppedError):
            refused.result(1)
        assert b.stats.drops == 2
        gate.set()
        assert [f.result(5) for f in kept] == [[2], [4]]
    finally:
        gate.set()
        b.close()


def test_a_bad_item_fails_only_its_own_request() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher("bad", rec, max_batch=8, max_delay=0.0)
    try:
        b.submit([("x", 0)], stream="x")
        assert rec.entered.wait(5)
        bad = b.submit([("a", -1)], stream="a")
        good = b.submit([("b", 3)], stream="b")
        gate.set()
        with pytest.raises(ValueError, match="negative"):
            bad.result(5)
        assert good.result(5) == [6]
        assert b.stats.failures == 1
    finally:
        gate.set()
        b.close()


def test_close_fails_what_is_queued_and_refuses_more() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    b = Batcher("close", rec, max_batch=1, max_delay=0.0)
    b.submit([("a", 0)], stream="a")
    assert rec.entered.wait(5)
    queued = b.submit([("a", 1)], stream="a")
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.set()
    closer.join(10)
    with pytest.raises(BatchDroppedError):
        queued.result(5)
    with pytest.raises(BatchDroppedError, match="closed"):
        b.submit([("a", 2)], stream="a")


def test_bucket_and_groups() -> None:
    assert [bucket(n, (8, 16, 32)) for n in (1, 8, 9, 32, 40)] == [8, 8, 16, 32, 40]
    assert groups([16, 8, 16, 32, 8]) == [[0, 2], [1, 4], [3]]


def test_vad_windows_of_many_streams_batch_to_the_same_probabilities(tmp_path: Path) -> None:
    """The real silero model: 4 streams of uneven lengths through one batcher equal 4 private
    runs, state included, and each stream's snippet crosses to the batcher once."""
    from livesense.config import EngineSettings

    factory = EngineFactory(EngineSettings(cache_dir=tmp_path, batch_max_delay_ms=5), "cpu")
    engine = factory.engine(vad_spec(), threads=1)
    batcher = factory.batcher("vad", vad_runner(engine))
    assert batcher is not None
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    audio = [
        (
            np.sin(2 * np.pi * (200 + 90 * s) * t) * (0.3 if s % 2 else 0.0)
            + rng.standard_normal(16000) * 0.01
        ).astype(np.float32)[: 16000 - 1500 * s]
        for s in range(4)
    ]
    private = [SileroVad(engine=engine) for _ in audio]
    alone = [v.probs(a) for v, a in zip(private, audio, strict=True)]
    shared = [SileroVad(engine=engine, batcher=batcher) for _ in audio]
    ready = threading.Barrier(4)

    def at_once(vad: SileroVad, a: np.ndarray) -> np.ndarray:
        ready.wait()
        return vad.probs(a)

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(at_once, shared, audio))
    first = batcher.stats.as_json()
    assert first["items"] == 4 and first["batches"] < 4  # one request per stream, some shared
    for x, y, a in zip(alone, together, audio, strict=True):
        assert len(x) == len(y) == len(a) // 512
        np.testing.assert_allclose(x, y, atol=1e-5)
    for p, s in zip(private, shared, strict=True):  # the recurrent state goes on alike
        np.testing.assert_allclose(p.probs(audio[1][:2048]), s.probs(audio[1][:2048]), atol=1e-5)
    assert batcher.stats.as_json()["items"] == 8
    factory.close()


def test_the_adaptive_delay_follows_the_batch_time() -> None:
    slow = Batcher("slow", Recorder(delay=0.1), max_batch=4, max_delay=None)
    fast = Batcher("fast", Recorder(), max_batch=4, max_delay=None)
    try:
        assert slow.delay == fast.delay == 0.001  # nothing measured yet: the floor
        for k in range(3):
            slow([("a", k)], stream="a")
            fast([("a", k)], stream="a")
        assert 0.008 <= slow.delay <= 0.012  # a tenth of ~100 ms
        assert fast.delay == 0.001
    finally:
        slow.close()
        fast.close()
