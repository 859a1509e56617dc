"""Bounded queues with named drop policies; every drop is counted."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from livesense.drop_policy import DropPolicy

__all__ = ["BoundedQueue", "DropPolicy"]

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    """An asyncio queue with a hard bound, a drop policy and a drop counter."""

    def __init__(self, name: str, maxsize: int, policy: str) -> None:
        if maxsize < 1:
            raise ValueError("a bounded queue needs maxsize >= 1")
        self.name = name
        self.maxsize = maxsize
        self.policy = DropPolicy.named(policy)  # a plain "wait" is welcome too
        self.drops = 0
        self._items: deque[T] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fill(self) -> float:
        return len(self._items) / self.maxsize

    async def put(self, item: T) -> T | None:
        """Queue `item`; returns the item dropped to make room, if any."""
        dropped: T | None = None
        if len(self._items) >= self.maxsize:
            if self.policy is DropPolicy.WAIT:
                while len(self._items) >= self.maxsize:
                    self._not_full.clear()
                    await self._not_full.wait()
            elif self.policy is DropPolicy.DROP_OLDEST:
                dropped = self._items.popleft()
                self.drops += 1
            else:
                self.drops += 1
                return item
        self._items.append(item)
        self._not_empty.set()
        return dropped

    def put_control(self, item: T) -> None:
        """Control items (end of stream) overtake nothing but are never dropped or delayed."""
        self._items.append(item)
        self._not_empty.set()

    async def get(self) -> T:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        self._not_full.set()
        return item
