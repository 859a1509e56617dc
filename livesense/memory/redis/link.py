"""RedisLink: one connection to Redis, the event-loop thread that drives it, and what every
part of the Redis store shares (key names, this process's writer token, the lease TTL).

Every part talks to Redis through the one asyncio client, on the one loop thread; blocking
callers go through `call`, which turns Redis trouble into one sentence.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from livesense.config import RedisSettings
from livesense.errors import LivesenseError, StoreUnavailableError, missing_package
from livesense.memory.loop_thread import LoopThread
from livesense.memory.redis_keys import RedisKeys
from livesense.urls import shown_url

T = TypeVar("T")

# Every part logs as the store does: log lines name the Redis store, whichever part speaks.
log = logging.getLogger("livesense.memory.redis_store")


class RedisLink:
    """The client, its loop thread, and the names and settings the parts share."""

    def __init__(self, url: str, settings: RedisSettings) -> None:
        self.aioredis = import_redis()
        self.url = url
        self.settings = settings
        self.keys = RedisKeys(settings.prefix)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = int(settings.lease_ttl * 1000)
        self.closed = False
        self.client: Any = None
        self.io = LoopThread("livesense-redis")

    @property
    def shown(self) -> str:
        """The URL as it may be shown (without a password)."""
        return shown_url(self.url)

    async def connect(self) -> None:
        """Open the client and check that the server answers (one sentence if not)."""
        self.client = self.aioredis.Redis.from_url(
            self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        try:
            await self.client.ping()
        except (self.aioredis.RedisError, OSError) as e:
            await self.client.aclose()
            raise LivesenseError(f"Redis at {self.shown} cannot be reached ({e}).") from None

    def errors(self) -> tuple[type[BaseException], ...]:
        """What an unreachable or slow server raises."""
        return (self.aioredis.ConnectionError, self.aioredis.TimeoutError, OSError)

    def call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run a coroutine on the loop thread; Redis trouble becomes one sentence."""
        if self.closed:
            coro.close()
            raise LivesenseError("This memory has been closed.")
        try:
            return self.io.run(coro, timeout=60)
        except self.errors() as e:
            raise StoreUnavailableError(
                f"Redis at {self.shown} could not {what} ({e.__class__.__name__}: {e})."
            ) from None


def import_redis() -> Any:
    """redis-py's asyncio module, or one sentence naming the extra to install."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise missing_package("redis", "The Redis store", extra="redis") from None
    return aioredis
