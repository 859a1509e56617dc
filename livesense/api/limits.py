"""Request size limits as ASGI middleware: long paths and query strings get 414, large bodies 413,
bodies that stop arriving 408; and per-token rate limits shared by every API process through
Redis.

Sizes are checked before any route runs, so no endpoint ever reads more than the limit; a body
sent without a Content-Length is counted as it streams in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livesense.api.auth import RateLimiter
from livesense.config import SecuritySettings
from livesense.errors import missing_package
from livesense.memory.redis_keys import RedisKeys
from livesense.urls import shown_url

log = logging.getLogger("livesense.api")


class RequestLimits:
    """Refuses oversize requests with a JSON reason before they reach the app."""

    def __init__(self, app: ASGIApp, settings: SecuritySettings | None = None) -> None:
        self.app = app
        self.settings = settings or SecuritySettings()
        self.refused = 0
        self.timed_out = 0  # request bodies that stalled (408)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        s = self.settings
        path = scope.get("raw_path") or scope.get("path", "").encode()
        query = scope.get("query_string", b"")
        reason: tuple[int, str] | None = None
        if len(path) > s.max_path_bytes:
            reason = 414, f"The request path is longer than {s.max_path_bytes} bytes."
        elif len(query) > s.max_query_bytes:
            reason = 414, f"The query string is longer than {s.max_query_bytes} bytes."
        elif scope["type"] == "http":
            length = _content_length(scope)
            if length == -1:
                reason = 400, "The Content-Length header is not a number."
            elif length is not None and length > s.max_body_bytes:
                reason = 413, f"The request body is larger than {s.max_body_bytes} bytes."
        if reason is not None:
            self.refused += 1
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009, "reason": reason[1]})
                return
            await _answer(send, *reason)
            return
        if scope["type"] == "http":
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        limit = self.settings.max_body_bytes
        wait = self.settings.body_timeout
        seen = 0
        done = False

        async def counted() -> Message:
            nonlocal seen, done
            if done:  # the body is in: what follows is the client leaving, however late
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                self.refused += 1
                self.timed_out += 1
                raise HTTPException(
                    408, f"The request body stopped arriving: nothing came for {wait:g} s."
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.refused += 1
                    raise HTTPException(413, f"The request body is larger than {limit} bytes.")
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return counted


def _content_length(scope: Scope) -> int | None:
    """The stated body length; None when absent, -1 when not a number."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else -1
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


# -- rate limits shared through Redis ---------------------------------------------------------

# KEYS: the caller's bucket. ARGV: refill rate (tokens/s), burst, time to live (s).
# Redis's clock is every process's clock, so the buckets agree whoever answers. Buckets are
# not worth an fsync per request: they stay out of the AOF and replicas (a restarted or
# failed-over Redis starts them full again).
BUCKET_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
redis.set_repl(redis.REPL_NONE)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(b[1]) or burst
local last = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * tonumber(ARGV[1]))
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {allowed, tostring(tokens)}
"""

REDIS_RETRY = 2.0  # s without asking Redis after it failed (requests use the local buckets)
REDIS_TIMEOUT = 0.5  # s a bucket may take in Redis before the local one answers instead

RATE_FALLBACKS = Counter(
    "livesense_rate_limit_local_total",
    "Requests rate-limited in this process only because Redis was unreachable.",
)


class SharedRateLimiter(RateLimiter):
    """Token buckets in Redis (one script per request), so every API process that serves the
    same Redis spends one budget per token. While Redis is unreachable each process falls back
    to its own buckets (RateLimiter): counted in `fallbacks` and the metric, and logged."""

    def __init__(
        self, url: str, prefix: str, per_minute: float, burst: int, max_keys: int = 10000
    ) -> None:
        super().__init__(per_minute, burst, max_keys)
        try:
            import redis
        except ImportError:
            raise missing_package("redis", "Shared rate limits", extra="redis") from None
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._bucket = self._client.register_script(BUCKET_LUA)
        self.keys = RedisKeys(prefix)
        self.url = url
        self.ttl = int(math.ceil(self.burst / self.rate)) + 1  # a full bucket is forgotten
        self.fallbacks = 0  # requests limited locally because Redis was unreachable
        self.last_error: str | None = None
        self._skip_until = 0.0
        self._warned = -math.inf

    def take(self, key: str, what: str = "queries") -> None:
        """Spend one request of `key` in Redis; RateLimited (429) when its bucket is empty."""
        if time.monotonic() >= self._skip_until:
            try:
                allowed, tokens = self._bucket(
                    keys=[self.keys.rate(key)], args=[repr(self.rate), repr(self.burst), self.ttl]
                )
            except self._errors as e:
                self._unreachable(e)
            else:
                if self.last_error is not None:
                    log.warning("Redis at %s answers again: rate limits are shared again",
                                shown_url(self.url))  # fmt: skip
                    self.last_error = None
                if int(allowed):
                    return
                raise self.refused(what, float(tokens))
        self.fallbacks += 1
        RATE_FALLBACKS.inc()
        super().take(key, what)

    def _unreachable(self, e: BaseException) -> None:
        now = time.monotonic()
        self._skip_until = now + REDIS_RETRY
        self.last_error = f"{e.__class__.__name__}: {e}"
        if now - self._warned >= 30.0:
            self._warned = now
            log.warning(
                "Redis at %s is unreachable (%s); rate limits are per process until it is back "
                "(%d requests so far)", shown_url(self.url), self.last_error, self.fallbacks + 1,
            )  # fmt: skip

    def close(self) -> None:
        self._client.close()


def rate_limiter_for(store: Any, settings: SecuritySettings) -> RateLimiter:
    """Shared buckets when the memory is in Redis (every API process then sees the same
    Redis), else buckets of this process."""
    from livesense.memory.redis_store import RedisStore

    s = settings
    if isinstance(store, RedisStore):
        prefix = store.redis_settings.prefix
        return SharedRateLimiter(store.url, prefix, s.rate_per_minute, s.rate_burst, s.rate_keys)
    return RateLimiter(s.rate_per_minute, s.rate_burst, s.rate_keys)
