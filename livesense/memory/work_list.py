"""WorkList: the streams to ingest, held in Redis, shared by API processes and workers.

Any API process adds (start) or withdraws (stop) a stream; every `livesense worker` reads the
list, takes a stream that nobody ingests by taking its lease (RedisStore.acquire), runs it and
reports its status here. A stream whose owner dies is taken over by another worker once the
owner's lease has expired. API processes keep nothing: this list and Redis hold it all.
Async (redis-py asyncio) on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from livesense.errors import LivesenseError, NotFoundError, QueryError, StreamBusyError
from livesense.memory.redis_keys import RedisKeys
from livesense.memory.redis_store import _import_redis
from livesense.memory.search import check_stream
from livesense.urls import open_url, seal_url, shown_url

STATUS_STALE = 30.0  # seconds after which a worker's last report no longer counts as live


class WorkList:
    """Start, stop and list streams to ingest; the workers' side: report and finish."""

    def __init__(self, url: str, prefix: str = "ls", source_key: str | None = None) -> None:
        self.url = url
        self.source_key = source_key  # seals source URLs that hold credentials (livesense.urls)
        self.keys = RedisKeys(prefix)
        self._aioredis = _import_redis()
        self._client: Any = None

    async def _redis(self) -> Any:
        if self._client is None:
            self._client = self._aioredis.Redis.from_url(
                self.url, socket_timeout=10, socket_connect_timeout=5
            )
        return self._client

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (self._aioredis.ConnectionError, self._aioredis.TimeoutError, OSError) as e:
            raise LivesenseError(
                f"The work list in Redis at {shown_url(self.url)} cannot be reached ({e})."
            ) from None

    # -- API side ----------------------------------------------------------------------

    async def start(
        self,
        url: str,
        stream: str,
        *,
        realtime: bool = False,
        append: bool = False,
        base: int | None = None,
    ) -> dict[str, Any]:
        """Ask the workers to ingest `url` as `stream`; the status they will report. `base`:
        the snippet a recording starts at (manager.plan_start), kept so that a worker taking
        the stream over continues it there instead of appending it again. A URL with credentials
        is listed with them hidden, and travels sealed (security.source_key) for the workers to
        open: Redis never holds them in the clear."""
        check_stream(stream)
        shown = shown_url(url)
        sealed = seal_url(url, self.source_key) if shown != url else None  # ConfigError: no key
        r = await self._redis()
        spec: dict[str, Any] = {
            "url": shown,
            "realtime": bool(realtime),
            "wanted": True,
            "since": time.time(),
            "append": bool(append),
            "base": base,
        }
        if sealed is not None:
            spec["sealed"] = sealed
        current = await self._do(r.hget(self.keys.specs, stream))
        if current is not None and json.loads(current).get("wanted"):
            raise QueryError(f"Stream {stream} is already being ingested; stop it first.")
        status = _status(stream, shown, "queued")
        pipe = r.pipeline(transaction=True)
        pipe.hset(self.keys.specs, stream, json.dumps(spec))
        pipe.hset(self.keys.status, stream, json.dumps(status))
        pipe.publish(self.keys.wake, stream)
        await self._do(pipe.execute())
        return status

    async def stop(self, stream: str) -> dict[str, Any]:
        """Withdraw a stream; its worker stops it and reports 'stopped'."""
        check_stream(stream)
        r = await self._redis()
        raw = await self._do(r.hget(self.keys.specs, stream))
        if raw is None:
            raise NotFoundError(f"Stream {stream} is not being ingested.")
        spec = json.loads(raw)
        spec["wanted"] = False
        status = await self.status(stream) or _status(stream, spec["url"], "stopping")
        status["state"] = "stopping"
        pipe = r.pipeline(transaction=True)
        pipe.hset(self.keys.specs, stream, json.dumps(spec))
        pipe.hset(self.keys.status, stream, json.dumps(status))
        pipe.publish(self.keys.wake, stream)
        await self._do(pipe.execute())
        return status

    def source_url(self, spec: dict[str, Any]) -> str:
        """The URL a worker opens for a spec: unsealed with this process's source_key."""
        sealed = spec.get("sealed")
        return str(spec["url"]) if sealed is None else open_url(str(sealed), self.source_key)

    async def forget(self, stream: str) -> None:
        """Take the stream off the list with its status (its data was deleted)."""
        r = await self._redis()
        pipe = r.pipeline(transaction=True)
        pipe.hdel(self.keys.specs, stream)
        pipe.hdel(self.keys.status, stream)
        await self._do(pipe.execute())

    async def wait_released(self, stream: str, store: Any, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Wait until no worker holds the stream's lease (it was just stopped), or say so."""
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(store.holder, stream) is not None:
            if time.monotonic() > deadline:
                raise StreamBusyError(
                    f"Stream {stream} is still being stopped by its worker; try again shortly."
                )
            await asyncio.sleep(0.2)

    async def specs(self) -> dict[str, dict[str, Any]]:
        """Every stream on the list: url, realtime, wanted."""
        r = await self._redis()
        raw = await self._do(r.hgetall(self.keys.specs))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def status(self, stream: str) -> dict[str, Any] | None:
        r = await self._redis()
        raw = await self._do(r.hget(self.keys.status, stream))
        return None if raw is None else dict(json.loads(raw))

    async def statuses(self) -> dict[str, dict[str, Any]]:
        """The last status reported for every stream on the list (or recently on it)."""
        r = await self._redis()
        raw = await self._do(r.hgetall(self.keys.status))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def running(self) -> list[str]:
        """Streams a worker reported as running within STATUS_STALE seconds."""
        now = time.time()
        return sorted(
            s
            for s, st in (await self.statuses()).items()
            if st.get("state") in ("starting", "running") and now - st.get("at", 0) < STATUS_STALE
        )

    # -- worker side -------------------------------------------------------------------

    async def report(self, stream: str, status: dict[str, Any], worker: str) -> None:
        """A worker's status of a stream it runs."""
        r = await self._redis()
        await self._do(
            r.hset(
                self.keys.status,
                stream,
                json.dumps({**status, "worker": worker, "at": time.time()}),
            )
        )

    async def finish(
        self, stream: str, status: dict[str, Any], worker: str, *, keep: bool = True
    ) -> None:
        """A stream ended (source done, stopped or failed): off the list, its status kept
        (keep=False: a stream withdrawn by a stop leaves no entry)."""
        r = await self._redis()
        pipe = r.pipeline(transaction=True)
        pipe.hdel(self.keys.specs, stream)
        if keep:
            entry = json.dumps({**status, "worker": worker, "at": time.time()})
            pipe.hset(self.keys.status, stream, entry)
        else:
            pipe.hdel(self.keys.status, stream)
        await self._do(pipe.execute())

    async def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        r = await self._redis()
        await self._do(r.hset(self.keys.workers, worker, json.dumps({**info, "at": time.time()})))

    async def workers(self) -> dict[str, dict[str, Any]]:
        r = await self._redis()
        raw = await self._do(r.hgetall(self.keys.workers))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def subscribe(self) -> Any:
        """A pub/sub connection that hears when the list changes."""
        r = await self._redis()
        pubsub = r.pubsub()
        await self._do(pubsub.subscribe(self.keys.wake))
        return pubsub

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _status(stream: str, url: str, state: str) -> dict[str, Any]:
    """A status in StreamStatus.to_json()'s shape, before any worker reported."""
    return {
        "stream": stream,
        "url": url,
        "state": state,
        "live": False,
        "error": None,
        "position": 0.0,
        "duration": None,
        "snippets": 0,
        "drops": 0,
        "shed": 0,
        "lag": 0.0,
    }
