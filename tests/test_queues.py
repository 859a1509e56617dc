"""Bounded queues: each drop policy does what its name says, and drops are counted."""

from __future__ import annotations

import asyncio

import pytest

from livesense.pipeline.queues import BoundedQueue, DropPolicy


async def test_drop_oldest_keeps_fresh_items() -> None:
    q: BoundedQueue[int] = BoundedQueue("t", 3, DropPolicy.DROP_OLDEST)
    for i in range(5):
        await q.put(i)
    assert q.drops == 2 and len(q) == 3
    assert [await q.get() for _ in range(3)] == [2, 3, 4]


async def test_drop_newest_keeps_queued_items() -> None:
    q: BoundedQueue[int] = BoundedQueue("t", 2, DropPolicy.DROP_NEWEST)
    for i in range(4):
        await q.put(i)
    assert q.drops == 2
    assert [await q.get() for _ in range(2)] == [0, 1]


async def test_wait_never_drops_and_blocks_the_producer() -> None:
    q: BoundedQueue[int] = BoundedQueue("t", 2, DropPolicy.WAIT)
    await q.put(0)
    await q.put(1)
    blocked = asyncio.create_task(q.put(2))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert await q.get() == 0
    await asyncio.wait_for(blocked, 1)
    assert q.drops == 0 and [await q.get() for _ in range(2)] == [1, 2]


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BoundedQueue("t", 0, DropPolicy.WAIT)


async def test_every_queue_takes_the_same_policy_words() -> None:
    from livesense.engines.batcher import Batcher
    from livesense.stream.handoff import Handoff

    q: BoundedQueue[int] = BoundedQueue("t", 1, "drop_newest")  # as settings spell it
    await q.put(1)
    assert await q.put(2) == 2 and q.drops == 1 and q.policy is DropPolicy.DROP_NEWEST
    b: Batcher[int, int] = Batcher("t", lambda xs: xs, policy="drop_oldest")
    assert b.policy is DropPolicy.DROP_OLDEST
    b.close()
    assert Handoff(2, asyncio.get_running_loop(), "drop_oldest").policy is DropPolicy.DROP_OLDEST
    for make in (
        lambda: BoundedQueue("t", 1, "drop_oldest_video"),
        lambda: Batcher("t", lambda xs: xs, policy="newest"),
    ):
        with pytest.raises(ValueError, match="one of wait, drop_oldest, drop_newest"):
            make()
    with pytest.raises(ValueError, match="cannot use the drop policy 'drop_newest'"):
        Handoff(2, asyncio.get_running_loop(), DropPolicy.DROP_NEWEST)
