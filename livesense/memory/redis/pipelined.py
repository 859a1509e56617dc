"""Pipelined reads: many commands in one round trip, each reply handed back with what asked.

Every read of the Redis store that needs more than one command goes through `pipelined`:
records of a stream by index, counts of many streams, two replies about one key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 500  # items asked in one round trip


async def pipelined(
    client: Any,
    items: Iterable[T],
    ask: Callable[[Any, T], object],
    *,
    chunk: int = CHUNK,
    also: Callable[[Any], object] | None = None,
) -> AsyncIterator[list[tuple[T, list[Any]]]]:
    """For each item, `ask(pipe, item)` queues its commands; a round trip per `chunk` items
    yields each item with the replies of its commands, in order. `also` queues further
    commands (writes that ride along) in the first round trip; their replies are dropped."""
    todo = list(items)
    for i in range(0, len(todo), chunk):
        pipe = client.pipeline(transaction=False)
        counts = []
        for item in todo[i : i + chunk]:
            before = len(pipe)
            ask(pipe, item)
            counts.append(len(pipe) - before)
        if also is not None and i == 0:
            also(pipe)
        replies = await pipe.execute()
        out, at = [], 0
        for item, n in zip(todo[i : i + chunk], counts, strict=True):
            out.append((item, list(replies[at : at + n])))
            at += n
        yield out


async def read_all(
    client: Any,
    items: Iterable[T],
    ask: Callable[[Any, T], object],
    **kw: Any,
) -> list[tuple[T, list[Any]]]:
    """Every (item, replies) of `pipelined`, collected."""
    return [pair async for part in pipelined(client, items, ask, **kw) for pair in part]


async def read(client: Any, ask: Callable[[Any], object]) -> list[Any]:
    """The replies of the commands `ask(pipe)` queues, in one round trip."""
    [(_, replies)] = await read_all(client, [None], lambda pipe, _: ask(pipe))
    return replies
