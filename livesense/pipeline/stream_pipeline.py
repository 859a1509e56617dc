"""One stream's path: source -> snippeter -> vision -> audio -> Combiner -> memory.

Each stage runs in its own worker thread (models release the GIL), so vision of snippet n+1
overlaps audio of snippet n. Stages are joined by bounded queues. On a live source that
perception cannot keep up with, work is shed in this order:
  1. OCR and audio event tagging are skipped (lag above one snippet);
  2. faces and the CLIP slot are skipped, one sampled frame is used, and speech regions that
     close are not transcribed (lag above three snippets);
  3. whole snippets are dropped, oldest first, when the snippet queue is full.
Voice activity, loudness and keyframes always run.
Every shed and drop is counted and exported. From files nothing is dropped or shed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from livesense.config import Settings
from livesense.errors import LivesenseError
from livesense.memory.store import MemoryStore
from livesense.pipeline import metrics
from livesense.pipeline.perception import Perception
from livesense.pipeline.queues import BoundedQueue, DropPolicy
from livesense.pipeline.snippeter import Snippeter
from livesense.records import EndOfStream, Features, Snippet
from livesense.stream.source import MediaSource, open_source

log = logging.getLogger("livesense.pipeline")

_END = object()


@dataclass
class StreamStatus:
    """What a stream is doing, for the CLI status line, the API and the web page."""

    stream: str
    url: str
    state: str = "starting"  # starting | running | done | stopped | error
    live: bool = False
    error: str | None = None
    position: float = 0.0  # stream time of the newest stored snippet end
    duration: float | None = None
    snippets: int = 0
    drops: int = 0
    shed: int = 0
    lag: float = 0.0
    started: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "url": self.url,
            "state": self.state,
            "live": self.live,
            "error": self.error,
            "position": round(self.position, 3),
            "duration": self.duration,
            "snippets": self.snippets,
            "drops": self.drops,
            "shed": self.shed,
            "lag": round(self.lag, 3),
        }


class StreamPipeline:
    """Ingests one source into memory until it ends or is stopped."""

    def __init__(
        self,
        stream: str,
        url: str,
        settings: Settings,
        store: MemoryStore,
        perception: Perception,
        *,
        realtime: bool = False,
        on_record: Callable[[StreamStatus], None] | None = None,
        source: MediaSource | None = None,
    ) -> None:
        self.stream = stream
        self.url = url
        self.settings = settings
        self.store = store
        self.perception = perception
        self.realtime = realtime
        self.status = StreamStatus(stream=stream, url=url)
        self.on_record = on_record
        self.source: MediaSource | None = source  # given: already open (e.g. a WebRTC track)
        self._pools = {
            name: ThreadPoolExecutor(1, thread_name_prefix=f"ls-{name}-{stream}")
            for name in ("vision", "audio", "store")
        }
        self._stopping = False
        self._snippets: BoundedQueue[Any] | None = None

    async def run(self) -> StreamStatus:
        """Run to the end of the source. Errors end up in status.error, never as a crash."""
        metrics.STREAMS.inc()
        try:
            await self._run()
            if self.status.state in ("starting", "running"):
                self.status.state = "stopped" if self._stopping else "done"
        except LivesenseError as e:
            self.status.state = "error"
            self.status.error = str(e)
        except asyncio.CancelledError:
            self.status.state = "stopped"
            raise
        except Exception as e:  # a bug: report it in one line and keep what is stored
            log.exception("stream %s failed", self.stream)
            self.status.state = "error"
            self.status.error = f"Stream {self.stream} failed: {e.__class__.__name__}: {e}."
        finally:
            metrics.STREAMS.dec()
            if self.source is not None:
                self.source.close()
            for pool in self._pools.values():
                pool.shutdown(wait=False, cancel_futures=True)
        return self.status

    def stop(self) -> None:
        """Ask the stream to end: the source closes and what is queued is flushed."""
        self._stopping = True
        if self.source is not None:
            self.source.close()

    async def _run(self) -> None:
        s = self.settings
        self.perception.load()
        if self.source is None:
            self.source = await asyncio.to_thread(
                open_source,
                self.url,
                realtime=self.realtime,
                fps=s.snippet.fps,
                max_side=s.snippet.max_side,
                queue_size=s.queues.media,
            )
        source = self.source
        self.status.live = source.live
        self.status.duration = getattr(source, "duration", None)
        self.status.state = "running"
        policy = DropPolicy.DROP_OLDEST if source.live else DropPolicy.WAIT
        snippets: BoundedQueue[Any] = BoundedQueue("snippets", s.queues.snippets, policy)
        self._snippets = snippets
        seen: BoundedQueue[Any] = BoundedQueue("features", s.queues.snippets, DropPolicy.WAIT)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._produce(source, snippets))
            tg.create_task(self._see(snippets, seen))
            tg.create_task(self._hear_and_store(seen, live=source.live))

    async def _produce(self, source: MediaSource, out: BoundedQueue[Any]) -> None:
        snippeter = Snippeter(
            self.stream,
            self.settings.snippet.seconds,
            has_audio=source.has_audio,
            has_video=source.has_video,
            wall_anchor=source.wall_anchor,
        )
        reason: str | None = None
        async for item in source.items():
            if isinstance(item, EndOfStream):
                reason = item.reason
                break
            if snippeter.wall_anchor is None and source.wall_anchor is not None:
                snippeter.wall_anchor = source.wall_anchor
            for snip in snippeter.push(item):
                if await out.put(snip) is not None:
                    metrics.DROPS.labels(self.stream, "snippet").inc()
                metrics.QUEUE_FILL.labels(self.stream, "snippets").set(len(out))
        for snip in snippeter.flush():
            await out.put(snip)
        if reason and not self._stopping:
            self.status.error = reason
        out.put_control(_END)

    def _lag(self, snip: Snippet) -> float:
        if snip.wall is None:
            return 0.0
        return max(0.0, time.time() - (snip.wall + snip.duration))

    async def _see(self, inp: BoundedQueue[Any], out: BoundedQueue[Any]) -> None:
        loop = asyncio.get_running_loop()
        vision = self.perception.vision_stage()
        seconds = self.settings.snippet.seconds
        while (snip := await inp.get()) is not _END:
            features = Features()
            shed = 0
            if self.status.live:
                lag = self._lag(snip)
                shed = 0 if lag <= seconds else 1 if lag <= 3 * seconds else 2
                if shed:
                    self.status.shed += 1
                    metrics.DROPS.labels(self.stream, f"shed{shed}").inc()
            t0 = time.perf_counter()
            work = functools.partial(vision.process, snip, features, shed=shed)
            await loop.run_in_executor(self._pools["vision"], work)
            metrics.STAGE_SECONDS.labels("vision").observe(time.perf_counter() - t0)
            await out.put((snip, features, shed))
        out.put_control(_END)

    async def _hear_and_store(self, inp: BoundedQueue[Any], *, live: bool) -> None:
        loop = asyncio.get_running_loop()
        audio = self.perception.audio_stage(live)
        while True:
            item = await inp.get()
            t0 = time.perf_counter()
            if item is _END:
                done = await loop.run_in_executor(self._pools["audio"], audio.flush)
            else:
                snip, features, shed = item
                work = functools.partial(audio.push, snip, features, shed=shed)
                done = await loop.run_in_executor(self._pools["audio"], work)
            metrics.STAGE_SECONDS.labels("audio").observe(time.perf_counter() - t0)
            if done:
                await loop.run_in_executor(self._pools["store"], self._store, done)
            if item is _END:
                return

    def _store(self, done: list[tuple[Snippet, Features]]) -> None:
        t0 = time.perf_counter()
        snippets = [s for s, _ in done]
        features = [f for _, f in done]
        records = self.perception.combiner.combine_batch(snippets, features)
        metrics.STAGE_SECONDS.labels("combine").observe(time.perf_counter() - t0)
        for record, f in zip(records, features, strict=True):
            t1 = time.perf_counter()
            self.store.add(record, f.keyframe)
            metrics.STAGE_SECONDS.labels("store").observe(time.perf_counter() - t1)
            metrics.SNIPPETS.labels(self.stream).inc()
            self.status.snippets += 1
            self.status.position = max(self.status.position, record.end)
            if record.wall is not None:
                lag = max(0.0, time.time() - (record.wall + (record.end - record.start)))
                self.status.lag = lag
                metrics.LAG.labels(self.stream).set(lag)
                metrics.END_TO_QUERYABLE.observe(lag)
            self.status.drops = self.drops()
            if self.on_record is not None:
                self.on_record(self.status)

    def drops(self) -> int:
        """Media items and snippets dropped so far (live sources only)."""
        source = self.source.drops if self.source is not None else 0
        queue = self._snippets.drops if self._snippets is not None else 0
        return int(source + queue)
