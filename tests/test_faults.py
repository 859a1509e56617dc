"""Faults injected into real parts: an RTSP server that hangs up and then goes away, stages that
raise, a disk that fills up (a real tmpfs), and SIGTERM in the middle of a live ingest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from livesense.config import PerceptionSettings, Settings, load_settings
from livesense.memory.redis_store import RedisStore
from livesense.memory.store import MemoryStore
from livesense.memory.store_base import Store
from livesense.pipeline.perception import Perception
from livesense.pipeline.stream_pipeline import StreamPipeline, StreamStatus
from livesense.pipeline.supervisor import StageSupervisor
from livesense.stream.reconnect import ReconnectingSource
from tests.media import RtspServer, make_clip
from tests.redis_server import redis_server
from tests.test_auth import free_port

LIGHT = PerceptionSettings(asr=False, ocr=False, faces=False, events=False)
FAULTS: dict[str, Any] = {}


def survived(kind: str, n: int | float = 1) -> None:
    """Count injected faults that were survived (and keep figures) for the README."""
    FAULTS[kind] = FAULTS.get(kind, 0) + n
    out = Path(__file__).parent / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "faults.json").write_text(json.dumps(FAULTS, indent=1))


@pytest.fixture(scope="module")
def perception() -> Perception:
    p = Perception(LIGHT)
    p.load()
    return p


def settings_for(memory: Path, **resilience: Any) -> Settings:
    s = load_settings(memory=memory)
    s.perception = LIGHT
    for k, v in resilience.items():
        setattr(s.resilience, k, v)
    return s


@pytest.fixture(params=["embedded", "redis"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None: the embedded memory; else the URL of a fresh real redis-server."""
    if request.param == "embedded":
        yield None
    else:
        yield from (server.url for server in redis_server(tmp_path / "redis"))


async def test_a_dropped_rtsp_source_reconnects_with_backoff_and_marks_the_gap(
    tmp_path: Path, perception: Perception, redis_url: str | None
) -> None:
    clip = make_clip(tmp_path / "live.mp4", 3.0)
    settings = settings_for(tmp_path / "m", reconnect_initial=0.2, reconnect_attempts=3)
    store: Store
    if redis_url is not None:
        store = RedisStore(redis_url, settings.store)
    else:
        store = MemoryStore(settings.memory, settings.store)
    server = RtspServer(clip).__enter__()
    try:
        pipeline = StreamPipeline("cam", server.url, settings, store, perception)
        task = asyncio.create_task(pipeline.run())
        deadline = time.monotonic() + 60
        # the server plays the clip and hangs up; the source comes back for a second play
        while not (pipeline.status.reconnects >= 1 and pipeline.status.snippets >= 2):
            assert not task.done(), pipeline.status.to_json()
            assert time.monotonic() < deadline, pipeline.status.to_json()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
    finally:
        server.close()  # now it drops mid-play and every reconnect is refused
    status = await asyncio.wait_for(task, 60)
    source = pipeline.source
    assert isinstance(source, ReconnectingSource)
    assert status.gaps >= 1 and status.last_gap is not None
    gap_start, gap_end = status.last_gap
    assert 2.0 <= gap_start <= 4.0 and gap_end > gap_start
    # one timeline: moments before the outage and after it, none inside it
    store.refresh()
    moments = [(h.start, h.end) for h in store.search("frame", stream="cam", top_k=50)]
    assert any(end <= gap_start + 2.0 for _, end in moments)
    assert any(start >= gap_end - 2.0 for start, _ in moments)
    # memory keeps the gap: the timeline shows it, with its reason, among the stored moments
    timeline = store.timeline("cam")
    assert all(a.end == b.start for a, b in zip(timeline, timeline[1:], strict=False))
    marks = [m for m in timeline if m.tier == "gap"]
    assert len(marks) == 1 and "reconnected after 1 attempt" in marks[0].summary, timeline
    assert marks[0].start <= round(gap_start, 3) and marks[0].end >= round(gap_end, 3)
    assert any(m.tier != "gap" and m.end <= marks[0].start for m in timeline)
    assert any(m.tier != "gap" and m.start >= marks[0].end for m in timeline)
    assert [(g.start, g.end) for g in store.gaps("cam")] == [
        (round(gap_start, 3), round(gap_end, 3))
    ]
    # then the server is gone: three tries, waits doubling, and a clear end
    assert status.state == "error" and status.error and "after 3 attempts" in status.error
    tries = list(source.attempt_times)[-3:]
    waits = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert len(waits) == 2 and waits[1] > 1.5 * waits[0] and waits[0] >= 0.3
    store.close()
    kind = "embedded" if redis_url is None else "redis"
    survived(f"rtsp source dropped (reconnected, gap marked in {kind} memory)", status.reconnects)
    survived("rtsp reconnect refused (gave up cleanly)", 3)


class Flaky:
    """Wraps a stage so that its call on snippet `index` raises once (a deterministic fault)."""

    def __init__(self, stage: Any, method: str, index: int, log: list[int]) -> None:
        self._stage = stage
        self._method = method
        self._index = index
        self._log = log

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._stage, name)
        if name != self._method:
            return real

        def call(snip: Any, *args: Any, **kw: Any) -> Any:
            if snip.index == self._index and snip.index not in self._log:
                self._log.append(snip.index)
                raise RuntimeError(f"injected fault in {name} on snippet {snip.index}")
            return real(snip, *args, **kw)

        return call


async def test_a_stage_that_raises_is_restarted_and_the_snippet_kept(
    tmp_path: Path, perception: Perception, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = make_clip(tmp_path / "c.mp4", 8.0)
    settings = settings_for(tmp_path / "m")
    store = MemoryStore(settings.memory, settings.store)
    failed: list[int] = []
    made = {"vision": 0, "audio": 0}
    real_vision, real_audio = perception.vision_stage, perception.audio_stage

    def vision() -> Any:
        made["vision"] += 1
        return Flaky(real_vision(), "process", 2, failed)

    def audio(live: bool) -> Any:
        made["audio"] += 1
        return Flaky(real_audio(live), "push", 1, failed)

    monkeypatch.setattr(perception, "vision_stage", vision)
    monkeypatch.setattr(perception, "audio_stage", audio)
    status = await StreamPipeline("flaky", str(clip), settings, store, perception).run()
    assert status.state == "done" and status.error is None
    assert sorted(failed) == [1, 2] and status.stage_failures == 2
    assert made == {"vision": 2, "audio": 2}  # each failing stage was built anew
    assert store.count("flaky") == 4  # every snippet was stored, the failed ones too
    audio_failed, vision_failed = store.get("flaky", 1), store.get("flaky", 2)
    assert audio_failed is not None and audio_failed.evidence.keyframe  # vision still ran
    assert vision_failed is not None and vision_failed.evidence.loudness_db > -100  # audio ran
    store.close()
    survived("perception stage raised (restarted)", 2)


def test_a_stage_that_keeps_failing_rests() -> None:
    built: list[int] = []

    def factory() -> list[int]:
        built.append(1)
        return built

    sup: StageSupervisor[list[int]] = StageSupervisor("ocr", "s", factory, max_restarts=2, rest=60)

    def boom(stage: list[int]) -> str:
        raise ValueError("broken model")

    results = [sup.call(boom, lambda stage: "skipped") for _ in range(5)]
    assert results == ["skipped"] * 5
    assert sup.failures == 3 and sup.resting and sup.skipped == 2  # then it stopped trying
    assert "broken model" in (sup.last_error or "")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (root only); the test fills it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_a_full_disk_keeps_moments_in_ram_and_retries(
    full_disk: Path, tmp_path: Path, perception: Perception
) -> None:
    clip = make_clip(tmp_path / "c.mp4", 6.0)
    settings = settings_for(full_disk / "memory")
    store = MemoryStore(settings.memory, settings.store)
    filler = fill(full_disk)
    seen: list[tuple[int, str | None]] = []

    def on_record(st: StreamStatus) -> None:
        seen.append((st.unsaved, st.persist_error))

    pipeline = StreamPipeline("disk", str(clip), settings, store, perception, on_record=on_record)

    def free_space_later() -> None:
        deadline = time.time() + 60
        while pipeline.status.unsaved < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        filler.unlink()

    freer = threading.Thread(target=free_space_later)
    freer.start()
    status = await pipeline.run()
    freer.join()
    assert max(u for u, _ in seen) >= 2  # held in RAM while the disk was full...
    assert any(e == "the disk is full" for _, e in seen)  # ...and said so
    assert status.state == "done" and status.error is None
    assert status.unsaved == 0 and status.persist_error is None
    assert store.count("disk") == 3  # ...then written, nothing lost
    store.close()
    reopened = MemoryStore(settings.memory, settings.store, readonly=True)
    assert reopened.count("disk") == 3
    reopened.close()
    survived("disk full while persisting (held in RAM, retried)", 1)


async def test_a_disk_that_stays_full_is_reported_at_the_end(
    full_disk: Path, tmp_path: Path, perception: Perception
) -> None:
    clip = make_clip(tmp_path / "c.mp4", 4.0)
    settings = settings_for(full_disk / "memory", drain_seconds=1.0)
    store = MemoryStore(settings.memory, settings.store)
    fill(full_disk)
    status = await StreamPipeline("stuck", str(clip), settings, store, perception).run()
    assert status.unsaved == 2 and status.error is not None
    assert "2 moments of stream stuck could not be written" in status.error
    assert "disk is full" in status.error
    store.close()
    survived("disk stayed full (reported, nothing hidden)", 1)


def test_sigterm_drains_and_flushes_before_exit(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mp4", 30.0)
    config = tmp_path / "light.yaml"
    config.write_text("perception: {asr: false, ocr: false, faces: false}\n")
    memory = tmp_path / "m"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "livesense.cli", "run", str(clip), "--realtime", "--memory",
         str(memory), "--port", str(port), "--stream", "live", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        deadline = time.time() + 120
        ingest: dict[str, Any] = {}
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            with contextlib.suppress(httpx.HTTPError):
                streams = httpx.get(f"http://127.0.0.1:{port}/v1/streams", timeout=2).json()
                ingest = next((s["ingest"] for s in streams["streams"] if s["ingest"]), {})
                if ingest.get("snippets", 0) >= 2:
                    break
            time.sleep(0.2)
        assert ingest.get("snippets", 0) >= 2, ingest
        t_signal = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - t_signal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert took < Settings().resilience.drain_seconds
    store = MemoryStore(memory, readonly=True)
    moments = store.streams()
    store.close()
    stored = next(m for m in moments if m["stream"] == "live")
    # what was queued and the half-filled snippet were written before the process ended
    assert stored["records"] >= ingest["snippets"] + 1
    assert stored["end"] > ingest["position"]
    survived("SIGTERM during a live ingest (drained, flushed)", 1)
    survived("seconds from SIGTERM to exit", round(took, 2))
