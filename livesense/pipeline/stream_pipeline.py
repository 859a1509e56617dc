"""One stream's path: source -> snippeter -> vision -> audio -> Combiner -> memory.

Each stage runs in its own worker thread (models release the GIL): vision and audio of a
snippet run at the same time, and a snippet is stored once both are done with it. Stages are
joined by bounded queues. On a live source that
perception cannot keep up with, work is shed in this order:
  1. OCR and audio event tagging are skipped (lag above one snippet);
  2. faces and the CLIP slot are skipped, one sampled frame is used, and speech regions that
     close are not transcribed (lag above three snippets);
  3. whole snippets are dropped, oldest first, when the snippet queue is full.
Voice activity, loudness and keyframes always run.
Every shed and drop is counted and exported. From files nothing is dropped or shed.
Faults stay inside the stream: a live source that drops is reopened (a Gap marks the outage),
a stage that raises is restarted (supervisor.py) and a memory that cannot be written holds
moments in RAM and retries (persister.py).
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
from livesense.errors import LivesenseError, first_error
from livesense.memory.store_base import Store
from livesense.pipeline import metrics
from livesense.pipeline.heap import trim_heap, tune_heap
from livesense.pipeline.perception import Perception
from livesense.pipeline.persister import Persister
from livesense.pipeline.queues import BoundedQueue, DropPolicy
from livesense.pipeline.snippeter import Snippeter
from livesense.pipeline.stages import END, AudioStage, EndOfQueue, Seen, ShedLevel, VisionStage
from livesense.pipeline.stream_start import reuse_refusal, stored_end
from livesense.pipeline.stream_state import StreamState
from livesense.pipeline.supervisor import StageSupervisor
from livesense.records import EndOfStream, Features, Gap, Snippet
from livesense.stream.reconnect import ReconnectingSource
from livesense.stream.source import Source, open_source
from livesense.urls import shown_url

log = logging.getLogger("livesense.pipeline")


@dataclass
class StreamStatus:
    """What a stream is doing, for the CLI status line, the API and the web page."""

    stream: str
    url: str
    state: StreamState = StreamState.STARTING
    live: bool = False
    error: str | None = None
    position: float = 0.0  # stream time of the newest stored snippet end
    duration: float | None = None
    snippets: int = 0
    drops: int = 0
    shed: int = 0
    lag: float = 0.0
    started: float = field(default_factory=time.time)
    gaps: int = 0  # outages and timestamp jumps (see last_gap)
    last_gap: tuple[float, float] | None = None
    reconnects: int = 0
    stage_failures: int = 0  # perception calls that raised (the stage was restarted)
    unsaved: int = 0  # moments held in RAM because memory cannot be written
    persist_error: str | None = None  # why memory cannot be written, while it cannot

    def move(self, state: StreamState) -> None:
        """Go to `state` (ValueError for a transition StreamState does not allow)."""
        self.state = self.state.to(state)

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "url": self.url,
            "state": self.state.value,
            "live": self.live,
            "error": self.error,
            "position": round(self.position, 3),
            "duration": self.duration,
            "snippets": self.snippets,
            "drops": self.drops,
            "shed": self.shed,
            "lag": round(self.lag, 3),
            "gaps": self.gaps,
            "last_gap": None if self.last_gap is None else [round(t, 3) for t in self.last_gap],
            "reconnects": self.reconnects,
            "stage_failures": self.stage_failures,
            "unsaved": self.unsaved,
            "persist_error": self.persist_error,
        }


class StreamPipeline:
    """Ingests one source into memory until it ends or is stopped."""

    def __init__(
        self,
        stream: str,
        url: str,
        settings: Settings,
        store: Store,
        perception: Perception,
        *,
        realtime: bool = False,
        on_record: Callable[[StreamStatus], None] | None = None,
        source: Source | None = None,
        append: bool = False,
        base: int | None = None,
    ) -> None:
        """A live source continues after what the stream has stored. A recording (a file)
        starts at snippet `base` when given (what is stored from there on is skipped: a
        stream taken over from a worker that died); else at 0 for a new stream, after what is
        stored with `append` (a gap marker between), and is refused without it."""
        self.stream = stream
        self.url = url
        self.settings = settings
        self.store = store
        self.perception = perception
        self.realtime = realtime
        self.status = StreamStatus(stream=stream, url=shown_url(url))  # no credentials shown
        tune_heap()
        self.on_record = on_record
        self.source: Source | None = source  # given: already open (e.g. a WebRTC track)
        self.append = append
        self.base = base
        self.failure: LivesenseError | None = None  # why the stream ended in error
        self.opened = False  # the source was opened and accepted: the stream ran
        self._pools = {
            name: ThreadPoolExecutor(1, thread_name_prefix=f"ls-{name}-{stream}")
            for name in ("vision", "audio", "store")
        }
        self._stopping = False
        self._snippets: BoundedQueue[Snippet | EndOfQueue] | None = None
        self._stages: dict[str, StageSupervisor[Any]] = {}
        r = settings.resilience
        self.persister = Persister(
            store, stream, max_unsaved=r.unsaved_max, retry_max=r.persist_retry_max
        )

    async def run(self) -> StreamStatus:
        """Run to the end of the source. Errors end up in status.error, never as a crash."""
        metrics.STREAMS.inc()
        try:
            await self._run()
            if self.status.state.active:
                # a source that failed, or moments that could not be stored: never "done"
                if self.status.error is not None:
                    self.status.move(StreamState.ERROR)
                else:
                    self.status.move(StreamState.STOPPED if self._stopping else StreamState.DONE)
        except LivesenseError as e:
            self.failure = e
            self.status.move(StreamState.ERROR)
            self.status.error = str(e)
        except asyncio.CancelledError:
            self.status.move(StreamState.STOPPED)
            raise
        except Exception as e:  # a bug: report it in one line and keep what is stored
            log.error("stream %s failed: %s: %s", self.stream, e.__class__.__name__, e)
            log.debug("stream %s failed", self.stream, exc_info=True)
            self.status.move(StreamState.ERROR)
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
        if self.source is None:
            opener = functools.partial(
                open_source,
                self.url,
                realtime=self.realtime,
                fps=s.snippet.fps,
                max_side=s.snippet.max_side,
                queue_size=s.queues.media,
                limits=s.media,
            )
            first: Source = await asyncio.to_thread(opener)
            r = s.resilience
            if first.live and r.reconnect and not self._stopping:
                first = ReconnectingSource(
                    first,
                    opener,
                    initial=r.reconnect_initial,
                    maximum=r.reconnect_max,
                    attempts=r.reconnect_attempts,
                )
            if self._stopping:  # stopped while opening
                first.close()
            self.source = first
        source = self.source
        if not source.live:
            self.base = await self._recording_base(source)
        self.perception.load()  # once the source is known to be good (a no-op when loaded)
        self.status.live = source.live
        self.status.duration = source.duration
        self.status.move(StreamState.RUNNING)
        self.opened = True
        policy = DropPolicy.DROP_OLDEST if source.live else DropPolicy.WAIT
        snippets: BoundedQueue[Snippet | EndOfQueue] = BoundedQueue(
            "snippets", s.queues.snippets, policy
        )
        self._snippets = snippets
        seen: BoundedQueue[Seen | EndOfQueue] = BoundedQueue(
            "features", s.queues.snippets, DropPolicy.WAIT
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._produce(source, snippets))
                tg.create_task(self._see(snippets, seen))
                # A paced file holds speech back no longer than a live source does.
                tg.create_task(self._hear_and_store(seen, live=source.live or self.realtime))
        except* Exception as group:  # the stage that failed says why, not the group
            raise first_error(group) from None

    async def _recording_base(self, source: Source) -> int:
        """Where a recording starts on the stream's clock (see __init__); a recording put
        after stored moments gets a gap marker from their end to its start."""
        stored = await asyncio.to_thread(self.store.next_index, self.stream)
        base = self.base
        if base is None:
            if stored and not self.append:
                end = await asyncio.to_thread(stored_end, self.store, self.stream)
                raise reuse_refusal(self.stream, end)
            base = stored
        if base > 0:
            seconds = self.settings.snippet.seconds
            end = await asyncio.to_thread(stored_end, self.store, self.stream, base)
            at = base * seconds
            shown = getattr(source, "shown", None) or self.url
            await self._mark_gap(Gap(min(end, at) if end else at, at, f"{shown} appended here"))
        return base

    async def _produce(self, source: Source, out: BoundedQueue[Snippet | EndOfQueue]) -> None:
        snippeter = Snippeter(
            self.stream,
            self.settings.snippet.seconds,
            has_audio=source.has_audio,
            has_video=source.has_video,
            wall_anchor=source.wall_anchor,
        )
        reason: str | None = None
        # A restarted live stream whose clock starts again at 0 continues after what is
        # stored; a source that keeps its own timeline (a WebRTC reconnect) is left as it is,
        # and a recording starts at its base (the snippets already stored are skipped by the
        # store: a stream taken over from a worker that died).
        if source.live:
            stored = await asyncio.to_thread(self.store.next_index, self.stream)
        else:
            stored = self.base or 0
        resume: int | None = None if stored else 0
        early: list[Gap] = []  # gaps seen before the first snippet fixed `resume`

        async def onto_memory_clock(snip: Snippet) -> None:
            nonlocal resume
            if resume is None:  # the first snippet fixes the shift, for it and earlier gaps
                resume = max(0, stored - snip.index)
                for gap in early:
                    await self._mark_gap(gap, resume)
                early.clear()
            if resume:
                _shift(snip, resume)

        async for item in source.items():
            if isinstance(item, EndOfStream):
                reason = item.reason
                break
            if isinstance(item, Gap):  # on memory's clock, like the snippets (see _shift)
                if resume is None:  # the shift is known with the first snippet
                    early.append(item)
                else:
                    await self._mark_gap(item, resume)
            if snippeter.wall_anchor is None and source.wall_anchor is not None:
                snippeter.wall_anchor = source.wall_anchor
            for snip in snippeter.push(item):
                await onto_memory_clock(snip)
                if await out.put(snip) is not None:
                    metrics.DROPS.labels(self.stream, "snippet").inc()
                metrics.QUEUE_FILL.labels(self.stream, "snippets").set(len(out))
        tail = snippeter.flush()
        if tail:
            tail[-1].last = True
        for snip in tail:
            await onto_memory_clock(snip)
            await out.put(snip)
        for gap in early:  # no snippet came after them: their times stand as they are
            await self._mark_gap(gap)
        if reason and not self._stopping:
            self.status.error = reason
        out.put_control(END)

    async def _mark_gap(self, gap: Gap, shift: int = 0) -> None:
        """Count an outage or timestamp jump; memory marks it where the store can."""
        if shift:
            dt = shift * self.settings.snippet.seconds
            gap = Gap(gap.start + dt, gap.end + dt, gap.reason)
        self.status.gaps += 1
        self.status.last_gap = (gap.start, gap.end)
        source = self.source
        self.status.reconnects = source.counters.reconnects if source is not None else 0
        mark = getattr(self.store, "mark_gap", None)
        if callable(mark):
            loop = asyncio.get_running_loop()
            try:
                reason = gap.reason or "media was missing"
                await loop.run_in_executor(
                    self._pools["store"], mark, self.stream, gap.start, gap.end, reason
                )
            except Exception as e:  # a lost marker must not end the stream
                log.warning("stream %s: the gap %.1f-%.1f s was not marked: %s",
                            self.stream, gap.start, gap.end, e)

    def _lag(self, snip: Snippet) -> float:
        if snip.wall is None:
            return 0.0
        return max(0.0, time.time() - (snip.wall + snip.duration))

    async def _see(
        self, inp: BoundedQueue[Snippet | EndOfQueue], out: BoundedQueue[Seen | EndOfQueue]
    ) -> None:
        loop = asyncio.get_running_loop()
        r = self.settings.resilience
        vision: StageSupervisor[VisionStage] = StageSupervisor(
            "vision",
            self.stream,
            self.perception.vision_stage,
            max_restarts=r.stage_restarts,
            rest=r.stage_rest,
        )
        seconds = self.settings.snippet.seconds
        while not isinstance(snip := await inp.get(), EndOfQueue):
            features = Features()
            shed = ShedLevel.NONE
            if self.status.live:
                shed = ShedLevel.for_lag(self._lag(snip), seconds)
                if shed:
                    self.status.shed += 1
                    metrics.DROPS.labels(self.stream, f"shed{int(shed)}").inc()
            t0 = time.perf_counter()
            work = functools.partial(
                vision.call,
                functools.partial(_see_one, snip=snip, features=features, shed=shed),
                functools.partial(_skip, snip=snip, features=features, what="vision"),
            )
            seen = loop.run_in_executor(self._pools["vision"], work)
            # The audio stage takes the snippet now and runs while vision does (they fill
            # different fields): a snippet's latency is the slower of the two, not their sum.
            await out.put(Seen(snip, features, shed, seen))
            await seen
            self._count_failures(vision)
            metrics.STAGE_SECONDS.labels("vision").observe(time.perf_counter() - t0)
        out.put_control(END)

    async def _hear_and_store(self, inp: BoundedQueue[Seen | EndOfQueue], *, live: bool) -> None:
        loop = asyncio.get_running_loop()
        r = self.settings.resilience
        audio: StageSupervisor[AudioStage] = StageSupervisor(
            "audio",
            self.stream,
            functools.partial(self.perception.audio_stage, live),
            max_restarts=r.stage_restarts,
            rest=r.stage_rest,
        )
        vision: dict[int, asyncio.Future[Any]] = {}  # id(snippet) -> its vision work
        while True:
            item = await inp.get()
            t0 = time.perf_counter()
            if isinstance(item, EndOfQueue):
                work = functools.partial(audio.call, _flush_stage, _salvage)
            else:
                vision[id(item.snippet)] = item.vision
                work = functools.partial(
                    audio.call,
                    functools.partial(
                        _hear_one, snip=item.snippet, features=item.features, shed=item.shed
                    ),
                    functools.partial(_salvage, snip=item.snippet, features=item.features),
                )
            done = await loop.run_in_executor(self._pools["audio"], work)
            self._count_failures(audio)
            metrics.STAGE_SECONDS.labels("audio").observe(time.perf_counter() - t0)
            for s, _ in done:  # stored once its vision is done too
                if (seen := vision.pop(id(s), None)) is not None:
                    await seen
            if done:
                await loop.run_in_executor(self._pools["store"], self._store, done)
            if isinstance(item, EndOfQueue):
                await loop.run_in_executor(self._pools["store"], self._flush_unsaved)
                return

    def _count_failures(self, stage: StageSupervisor[Any]) -> None:
        self._stages[stage.name] = stage
        self.status.stage_failures = sum(s.failures for s in self._stages.values())

    def _flush_unsaved(self) -> None:
        """End of stream: retry what memory could not take, until the drain deadline."""
        p = self.persister
        if not p.unsaved:
            return
        left = p.flush(time.monotonic() + self.settings.resilience.drain_seconds)
        self.status.unsaved = left
        self.status.persist_error = p.error
        if left:
            self.status.error = (
                f"{left} moments of stream {self.stream} could not be written to memory "
                f"({p.error})."
            )

    def _store(self, done: list[tuple[Snippet, Features]]) -> None:
        t0 = time.perf_counter()
        snippets = [s for s, _ in done]
        features = [f for _, f in done]
        records = self.perception.combiner.combine_batch(snippets, features)
        metrics.STAGE_SECONDS.labels("combine").observe(time.perf_counter() - t0)
        for record, f in zip(records, features, strict=True):
            t1 = time.perf_counter()
            self.persister.add(record, f.keyframe)
            self.status.unsaved = self.persister.unsaved
            self.status.persist_error = self.persister.error
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
        trim_heap()

    def drops(self) -> int:
        """Media items and snippets dropped so far (live sources only)."""
        source = self.source.counters.drops if self.source is not None else 0
        queue = self._snippets.drops if self._snippets is not None else 0
        return int(source + queue)


def _see_one(stage: VisionStage, *, snip: Snippet, features: Features, shed: ShedLevel) -> None:
    stage.process(snip, features, shed=shed)


def _hear_one(
    stage: AudioStage, *, snip: Snippet, features: Features, shed: ShedLevel
) -> list[tuple[Snippet, Features]]:
    return list(stage.push(snip, features, shed=shed))


def _flush_stage(stage: AudioStage) -> list[tuple[Snippet, Features]]:
    return list(stage.flush())


def _skip(stage: VisionStage, *, snip: Snippet, features: Features, what: str) -> None:
    features.skipped.append(what)


def _salvage(
    stage: AudioStage, *, snip: Snippet | None = None, features: Features | None = None
) -> list[tuple[Snippet, Features]]:
    """After the audio stage failed: what it still held, and the snippet it failed on,
    that one marked as missing its audio perception."""
    try:
        out = list(stage.flush())
    except Exception as e:
        log.warning("the failed audio stage could not hand back what it held: %s", e)
        out = []
    if snip is not None and features is not None:
        if not any(s is snip for s, _ in out):
            out.append((snip, features))
            out.sort(key=lambda pair: pair[0].index)
        if "audio" not in features.skipped:
            features.skipped.append("audio")
    return out


def _shift(snip: Snippet, k: int) -> None:
    """Move a snippet k snippets later on the stream clock (a resumed live stream)."""
    dt = k * snip.duration
    snip.index += k
    snip.start += dt
    snip.end += dt
    for frame in snip.frames:
        frame.t += dt  # snip.wall, the capture time of its start, stays as it is
