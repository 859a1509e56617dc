"""Standing queries: matching moments reach the subscriber's asyncio queue, bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from livesense.engines.text import shared_text_embedder
from livesense.errors import QueryError
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from livesense.records import Evidence, OcrLine, SnippetRecord

ROME = ("The next train to Rome leaves from platform nine.", ["ArrivalsfromRome", "PLATFORM9"])
OTHER = [
    ("The cafe on the first floor is open until eight tonight.", ["CAFE OPEN"]),
    ("Please mind the gap between the train and the platform.", ["EXIT"]),
    ("A dog is barking loudly near the entrance.", []),
]


def moment(i: int, text: str, ocr: list[str], stream: str = "cam1") -> SnippetRecord:
    parts = [t for t in (text, " ".join(ocr)) if t]
    return SnippetRecord(
        stream=stream,
        index=i,
        start=2.0 * i,
        end=2.0 * i + 2.0,
        tokens=shared_text_embedder().embed(parts),
        token_modalities=["speech", "text"][: len(parts)],
        token_times=[2.0 * i + 1.0] * len(parts),
        evidence=Evidence(
            transcript=text, ocr=[OcrLine(o, (0, 0, 50, 10), 0.9, 2.0 * i) for o in ocr]
        ),
    )


def publish_in_thread(hub: WatchHub, records: list[SnippetRecord]) -> None:
    def run() -> None:
        for r in records:
            hub.publish(r)

    t = threading.Thread(target=run)
    t.start()
    t.join()


async def test_only_the_matching_moment_is_pushed() -> None:
    hub = WatchHub()
    sub = hub.subscribe("Rome")
    others = [moment(i, *o) for i, o in enumerate(OTHER)]
    publish_in_thread(hub, [*others, moment(7, *ROME), moment(8, *OTHER[0])])
    hit = await asyncio.wait_for(sub.queue.get(), 5)
    assert (hit.stream, hit.index, hit.start) == ("cam1", 7, 14.0)
    assert hit.score >= sub.threshold and "Rome" in hit.evidence.transcript
    await asyncio.sleep(0.05)
    assert sub.queue.empty() and sub.drops == 0
    # unrelated moments score well below the threshold, the matching one well above
    unrelated = max(hub.score(sub, r) for r in others)
    assert unrelated < 0.5 * sub.threshold < hub.score(sub, moment(7, *ROME)) / 2


async def test_glued_ocr_alone_is_enough() -> None:
    hub = WatchHub()
    sub = hub.subscribe("rome")
    publish_in_thread(hub, [moment(1, "", ["ARRIVALSFROMROME"]), moment(2, *OTHER[1])])
    hit = await asyncio.wait_for(sub.queue.get(), 5)
    assert hit.index == 1


async def test_queue_is_bounded_and_drops_the_oldest() -> None:
    hub = WatchHub()
    sub = hub.subscribe("Rome", maxsize=2)
    publish_in_thread(hub, [moment(i, *ROME) for i in range(5)])
    await asyncio.sleep(0.1)  # let the loop run the deliveries
    assert sub.queue.qsize() == 2 and sub.drops == 3
    assert [sub.queue.get_nowait().index for _ in range(2)] == [3, 4]


async def test_stream_filter_and_unsubscribe() -> None:
    hub = WatchHub()
    only2 = hub.subscribe("Rome", stream="cam2")
    every = hub.subscribe("Rome")
    publish_in_thread(hub, [moment(1, *ROME, stream="cam1")])
    assert (await asyncio.wait_for(every.queue.get(), 5)).stream == "cam1"
    hub.unsubscribe(every)
    publish_in_thread(hub, [moment(2, *ROME, stream="cam2")])
    assert (await asyncio.wait_for(only2.queue.get(), 5)).stream == "cam2"
    await asyncio.sleep(0.05)
    assert every.queue.empty() and len(hub) == 1


async def test_subscribed_from_a_worker_thread_and_fed_by_store_add(tmp_path: Path) -> None:
    hub = WatchHub()
    # the API subscribes off the loop (embedding blocks); the first get() binds the loop
    sub = await asyncio.to_thread(hub.subscribe, "platform 9")
    store = MemoryStore(tmp_path, hub=hub)
    try:
        await asyncio.to_thread(store.add, moment(0, *OTHER[2]))
        await asyncio.to_thread(store.add, moment(1, *ROME), b"\xff\xd8jpeg")
        hit = await asyncio.wait_for(sub.queue.get(), 5)
        assert hit.index == 1 and hit.evidence.keyframe == "cam1/1.jpg"
        await asyncio.sleep(0.05)
        assert sub.queue.empty()
    finally:
        store.close()


def test_publish_is_cheap() -> None:
    hub = WatchHub()
    loop = asyncio.new_event_loop()
    try:
        subs = [hub.subscribe(q, loop=loop) for q in ("Rome", "cafe", "dog barking", "B-52")]
        rec = moment(0, *OTHER[1])
        t0 = time.perf_counter()
        for _ in range(200):
            hub.publish(rec)
        per = (time.perf_counter() - t0) / 200
        assert per < 0.005, per  # 4 standing queries: well under 5 ms per moment
        assert all(s.delivered == 0 for s in subs)
    finally:
        loop.close()


def test_bad_watch_queries_are_refused() -> None:
    hub = WatchHub()
    for q in ("", "x" * 1001):
        with pytest.raises(QueryError):
            hub.subscribe(q)
    with pytest.raises(QueryError):
        hub.subscribe("Rome", stream="bad/stream")
    with pytest.raises(QueryError):
        hub.subscribe("Rome", maxsize=0)
    assert len(hub) == 0
