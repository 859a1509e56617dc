"""Owns the streams being ingested: start from a URL, list, stop; every task tracked."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlparse

from livesense.config import Settings
from livesense.errors import LivesenseError, NotFoundError, QueryError
from livesense.memory.search import check_stream as check_stream_id
from livesense.memory.store_base import Store
from livesense.pipeline.perception import Perception
from livesense.pipeline.stream_pipeline import StreamPipeline, StreamStatus
from livesense.pipeline.stream_start import StreamExistsError, plan_start
from livesense.stream.source import Source, check_source_url
from livesense.urls import shown_url

__all__ = [
    "StreamExistsError",
    "StreamManager",
    "TooManyStreams",
    "check_stream_id",
    "plan_start",
    "stream_id_for",
]

log = logging.getLogger("livesense.streams")


class TooManyStreams(LivesenseError):
    status = 503


_LATIN: dict[int, str] = {
    ord(a): b
    for a, b in zip(
        "øØłŁđĐðÐıßæÆœŒþÞ",
        ["o", "O", "l", "L", "d", "D", "d", "D", "i", "ss", "ae", "AE", "oe", "OE", "th", "TH"],
        strict=True,
    )
}
"""Latin letters that Unicode does not decompose into a base letter and an accent."""


def stream_id_for(url: str) -> str:
    """A readable default stream id from a source URL or path ("lobby.mp4" -> "lobby").

    Stream ids are ASCII (they travel in URLs, Redis keys and file names): accented Latin
    letters lose their accents ("ünïcode.mp4" -> "unicode"); a name with no Latin letter or
    digit at all becomes "stream-" and a digest of the name, so two such files stay apart.
    """
    parsed = urlparse(url)
    raw = unquote(Path(parsed.path).stem) or parsed.hostname or "stream"
    plain = unicodedata.normalize("NFKD", raw.translate(_LATIN))
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", plain).strip("-.")
    if not re.search(r"[A-Za-z0-9]", name):
        digest = hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"stream-{digest}" if raw != "stream" else "stream"
    return name[:64]


def _log_end(stream: str, pipeline: StreamPipeline, task: asyncio.Task[StreamStatus]) -> None:
    """One line when a stream's ingest ends: how it ended and what it stored."""
    st = pipeline.status
    if task.cancelled():
        log.info("stream %s cancelled after %d snippets", stream, st.snippets)
    elif task.exception() is not None or st.state == "error":
        reason = st.error or str(task.exception())
        log.warning("stream %s failed after %d snippets: %s", stream, st.snippets, reason)
    else:
        log.info(
            "stream %s ended (%s): %d snippets, %.1f s", stream, st.state, st.snippets, st.position
        )


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
        source: Source | None = None,
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
        task = asyncio.create_task(pipeline.run(), name=f"stream-{stream}")
        self.tasks[stream] = task
        log.info("stream %s started from %s", stream, shown_url(url))
        task.add_done_callback(lambda t: _log_end(stream, pipeline, t))
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
