"""Worker: ingests streams taken from the Redis work list, one lease per stream.

Each pass (every `poll` seconds, or at once when the list changes) the worker reports the
status of the streams it runs, stops those withdrawn, notices those whose lease it lost (it
was too slow to renew and another worker took over: it stops writing, the store fences it),
hands back those that ended, and takes wanted streams nobody holds while it has room. A
stream's owner that dies stops renewing its lease; once it expires, another worker takes the
stream and continues it: a file from the start (what is stored is skipped), a live source
after its last stored snippet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from livesense.config import Settings
from livesense.errors import LivesenseError
from livesense.memory.redis_store import RedisStore
from livesense.memory.work_list import WorkList
from livesense.pipeline.manager import StreamManager
from livesense.pipeline.perception import Perception
from livesense.pipeline.stream_state import StreamState

log = logging.getLogger("livesense.worker")


class Worker:
    """Runs the streams of the work list that it leases, until stopped."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        work: WorkList,
        perception: Perception,
        *,
        max_streams: int | None = None,
        poll: float = 1.0,
    ) -> None:
        self.id = store.token
        self.settings = settings
        self.store = store
        self.work = work
        self.perception = perception
        self.max_streams = max_streams or settings.redis.worker_streams
        self.poll = poll
        self.manager = StreamManager(settings, store, perception, max_streams=self.max_streams)
        self._stop = asyncio.Event()
        self.started = time.time()

    def stop(self) -> None:
        """End run(): the streams are stopped and their leases given back."""
        self._stop.set()

    async def run(self) -> None:
        await asyncio.to_thread(self.perception.load)
        pubsub = await self.work.subscribe()
        log.info("worker %s ready for up to %d streams", self.id, self.max_streams)
        try:
            while not self._stop.is_set():
                try:
                    await self.step()
                except Exception as e:  # Redis away or a bug: report, wait, try again
                    log.warning("worker %s: %s", self.id, e)
                await self._wait(pubsub)
        finally:
            await self.manager.close()
            for sid in list(self.manager.pipelines):
                await self._hand_back(sid)
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _wait(self, pubsub: Any) -> None:
        """Until the next pass: `poll` seconds, a change of the list, or stop()."""
        deadline = time.monotonic() + self.poll
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(left, 0.2)
                )
            except Exception:
                await asyncio.sleep(min(left, 0.2))
                continue
            if msg is not None:
                return

    async def step(self) -> None:
        """One pass over the work list."""
        specs = await self.work.specs()
        ended: set[str] = set()  # handed back in this pass: not to be taken again from `specs`
        for sid in list(self.manager.pipelines):
            pipeline = self.manager.pipelines[sid]
            task = self.manager.tasks[sid]
            spec = specs.get(sid)
            if not self.store.owns(sid):  # another worker has it now
                log.warning("worker %s lost stream %s", self.id, sid)
                pipeline.stop()
                task.cancel()
                self._forget(sid)
                ended.add(sid)
            elif task.done():
                status = pipeline.status.to_json()
                await self.work.finish(sid, status, self.id)  # off the list, then let go
                await asyncio.to_thread(self.store.release, sid)
                self._forget(sid)
                ended.add(sid)
                log.info("stream %s ended: %s", sid, status["state"])
            elif spec is None or not spec.get("wanted"):
                status = (await self.manager.stop(sid)).to_json()
                stopped = {**status, "state": StreamState.STOPPED.value}
                await self.work.finish(sid, stopped, self.id, keep=False)
                await asyncio.to_thread(self.store.release, sid)
                self._forget(sid)
                ended.add(sid)
            else:
                await self.work.report(sid, pipeline.status.to_json(), self.id)
        for sid, spec in specs.items():
            if sid in ended:
                continue
            if not spec.get("wanted"):
                if sid not in self.manager.pipelines and await self._unowned(sid):
                    status = await self.work.status(sid) or {}
                    stopped = {**status, "state": StreamState.STOPPED.value}
                    await self.work.finish(sid, stopped, self.id, keep=False)
                continue
            if sid in self.manager.pipelines or len(self.manager.running()) >= self.max_streams:
                continue
            try:
                url = self.work.source_url(spec)  # credentials travel sealed
            except LivesenseError as e:
                log.error("worker %s cannot open stream %s: %s", self.id, sid, e)
                status = {**(await self.work.status(sid) or {}), "state": "error", "error": str(e)}
                await self.work.finish(sid, status, self.id)
                continue
            if await asyncio.to_thread(self.store.acquire, sid):
                base = spec.get("base")
                pipeline = await self.manager.start(
                    url,
                    sid,
                    realtime=bool(spec.get("realtime")),
                    append=bool(spec.get("append")),
                    base=None if base is None else int(base),
                )
                await self.work.report(sid, pipeline.status.to_json(), self.id)
                log.info("worker %s took stream %s", self.id, sid)
        await self.work.heartbeat(
            self.id, {"streams": sorted(self.manager.pipelines), "health": self.store.health()}
        )

    async def _unowned(self, sid: str) -> bool:
        return await asyncio.to_thread(self.store.holder, sid) is None

    async def _hand_back(self, sid: str) -> None:
        """On shutdown: the stream stays wanted for another worker; its lease is released."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.release, sid)
            status = self.manager.pipelines[sid].status.to_json()
            await self.work.report(sid, {**status, "state": StreamState.QUEUED.value}, self.id)
        self._forget(sid)

    def _forget(self, sid: str) -> None:
        self.manager.pipelines.pop(sid, None)
        self.manager.tasks.pop(sid, None)
