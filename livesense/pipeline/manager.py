"""Owns the streams being ingested: start from a URL, list, stop; every task tracked."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlparse

from livesense.config import Settings
from livesense.errors import LivesenseError, NotFoundError, QueryError
from livesense.memory.search import check_stream as check_stream_id
from livesense.memory.store_base import Store
from livesense.pipeline.perception import Perception
from livesense.pipeline.stream_pipeline import StreamPipeline, StreamStatus
from livesense.pipeline.stream_start import StreamExistsError, plan_start
from livesense.stream.source import MediaSource, check_source_url

__all__ = [
    "StreamExistsError",
    "StreamManager",
    "TooManyStreams",
    "check_stream_id",
    "plan_start",
    "stream_id_for",
]


class TooManyStreams(LivesenseError):
    status = 503


def stream_id_for(url: str) -> str:
    """A readable default stream id from a source URL or path ("lobby.mp4" -> "lobby")."""
    parsed = urlparse(url)
    name = Path(parsed.path).stem or parsed.hostname or "stream"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "stream"
    return name[:64]


class StreamManager:
    """Starts and stops StreamPipelines inside the running event loop."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        perception: Perception,
        *,
        max_streams: int = 16,
    ) -> None:
        self.settings = settings
        self.store = store
        self.perception = perception
        self.max_streams = max_streams
        self.pipelines: dict[str, StreamPipeline] = {}
        self.tasks: dict[str, asyncio.Task[StreamStatus]] = {}
        # the entry a running start replaced: put back if that start is refused
        self._replaced: dict[str, tuple[StreamPipeline, asyncio.Task[StreamStatus]]] = {}

    def running(self) -> list[str]:
        return [sid for sid, task in self.tasks.items() if not task.done()]

    async def start(
        self,
        url: str,
        stream: str | None = None,
        *,
        realtime: bool = False,
        source: MediaSource | None = None,
        append: bool = False,
        base: int | None = None,
    ) -> StreamPipeline:
        """Start ingesting `url` (or an already open `source`) as `stream` (append, base: see
        StreamPipeline)."""
        if source is None:
            check_source_url(url)
        stream = check_stream_id(stream or stream_id_for(url))
        if stream in self.running():
            raise QueryError(f"Stream {stream} is already being ingested; stop it first.")
        if len(self.running()) >= self.max_streams:
            raise TooManyStreams(
                f"This service already ingests {self.max_streams} streams, its limit."
            )
        pipeline = StreamPipeline(
            stream,
            url,
            self.settings,
            self.store,
            self.perception,
            realtime=realtime,
            source=source,
            append=append,
            base=base,
        )
        if stream in self.pipelines:
            self._replaced[stream] = (self.pipelines[stream], self.tasks[stream])
        self.pipelines[stream] = pipeline
        self.tasks[stream] = asyncio.create_task(pipeline.run(), name=f"stream-{stream}")
        return pipeline

    async def stop(self, stream: str, timeout: float = 30.0) -> StreamStatus:  # noqa: ASYNC109
        pipeline = self.pipelines.get(stream)
        task = self.tasks.get(stream)
        if pipeline is None or task is None:
            raise NotFoundError(f"Stream {stream} is not being ingested.")
        pipeline.stop()
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            return pipeline.status

    def forget(self, stream: str) -> None:
        """Drop the entry of a stream that has ended, so that the list shows it no more."""
        task = self.tasks.get(stream)
        if task is not None and not task.done():
            return
        self.pipelines.pop(stream, None)
        self.tasks.pop(stream, None)
        self._replaced.pop(stream, None)

    def withdraw(self, pipeline: StreamPipeline) -> None:
        """Undo a start that was refused once its source was opened: the entry goes, and the
        one it replaced (an earlier run of that stream id) comes back."""
        stream = pipeline.stream
        if self.pipelines.get(stream) is not pipeline:
            return
        replaced = self._replaced.pop(stream, None)
        self.forget(stream)
        if replaced is not None:
            self.pipelines[stream], self.tasks[stream] = replaced

    def statuses(self) -> list[StreamStatus]:
        return [p.status for p in self.pipelines.values()]

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop every stream at once; each drains and flushes within `timeout` seconds."""
        if timeout is None:
            timeout = self.settings.resilience.drain_seconds
        running = self.running()
        if running:
            await asyncio.gather(*(self.stop(sid, timeout=timeout) for sid in running))
