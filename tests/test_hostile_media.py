"""Hostile media: corrupt, truncated and adversarial files go through the real demux/decode
path; each ends that stream with a reason or is skipped, never a crash, and the other streams
and the service go on. The fuzz test mutates real encoded clips."""

from __future__ import annotations

import asyncio
import json
import os
import random
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from livesense.config import MediaLimits, PerceptionSettings, load_settings
from livesense.errors import SourceError
from livesense.memory.store import MemoryStore
from livesense.pipeline.manager import StreamManager
from livesense.pipeline.perception import Perception
from livesense.pipeline.snippeter import Snippeter
from livesense.records import AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.stream.source import open_source
from tests.media import make_clip

MUTATIONS = int(os.environ.get("LIVESENSE_FUZZ_MEDIA", "60"))


def read_all(path: Path, timeout: float = 60.0, **kw: Any) -> tuple[list[Any], Any]:
    """Open and decode a file the way a stream does; (items, source). SourceError at open."""
    source = open_source(str(path), **kw)

    async def drain() -> list[Any]:
        return [item async for item in source.items()]

    items = asyncio.run(asyncio.wait_for(drain(), timeout))
    return items, source


def check_items(items: list[Any], max_side: int = 640) -> None:
    """What comes out of a hostile file is still well-formed."""
    assert isinstance(items[-1], EndOfStream)
    assert not any(isinstance(i, EndOfStream) for i in items[:-1])
    last = {"video": -1.0, "audio": -1.0}
    for item in items[:-1]:
        if isinstance(item, Gap):
            assert np.isfinite(item.start) and item.end >= item.start
            continue
        assert np.isfinite(item.t) and item.t >= 0.0
        if isinstance(item, VideoFrame):
            h, w, c = item.image.shape
            assert c == 3 and item.image.dtype == np.uint8 and max(h, w) <= max_side
            assert item.t > last["video"]
            last["video"] = item.t
        else:
            assert isinstance(item, AudioChunk)
            assert item.samples.dtype == np.float32 and np.isfinite(item.samples).all()
            assert item.t >= last["audio"] - 1.0  # small steps back pass, as the clock allows
            last["audio"] = max(last["audio"], item.t)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    return {s: make_clip(folder / f"clip{s}", 2.0, size=(160, 120), fps=15)
            for s in (".mp4", ".mkv", ".ts", ".webm", ".wav")}


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random, plausible corruption of an encoded file."""
    b = bytearray(data)
    n = len(b)
    kind = rng.choice(["flip", "zero", "random", "truncate", "duplicate", "delete", "insert",
                       "header"])
    a = rng.randrange(n)
    size = rng.randint(1, max(1, n // 8))
    if kind == "flip":
        for _ in range(rng.randint(1, 64)):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "zero":
        b[a : a + size] = bytes(len(b[a : a + size]))
    elif kind == "random":
        b[a : a + size] = rng.randbytes(len(b[a : a + size]))
    elif kind == "truncate":
        del b[a:]
    elif kind == "duplicate":
        b[a:a] = b[a : a + size]
    elif kind == "delete":
        del b[a : a + size]
    elif kind == "insert":
        b[a:a] = rng.randbytes(size)
    else:  # the container's own header and tables
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(min(n, 1024))] = rng.randrange(256)
    return bytes(b), kind


def test_mutated_media_never_crashes_the_decoder(clips: dict[str, Path], tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("LIVESENSE_FUZZ_SEED", "20261129")))
    threads_before = threading.active_count()
    outcomes: dict[str, int] = {"refused": 0, "ended_with_reason": 0, "decoded": 0}
    kinds: dict[str, int] = {}
    t0 = time.perf_counter()
    for i in range(MUTATIONS):
        suffix = list(clips)[i % len(clips)]
        data, kind = mutate(clips[suffix].read_bytes(), rng)
        kinds[kind] = kinds.get(kind, 0) + 1
        path = tmp_path / f"m{i}{suffix}"
        path.write_bytes(data)
        try:
            items, source = read_all(path, timeout=60)
        except SourceError as e:
            assert str(e).endswith(".") and "Traceback" not in str(e)
            outcomes["refused"] += 1
            continue
        check_items(items)
        end = items[-1]
        if end.reason:
            assert end.reason.endswith(".") and "unexpected error" not in end.reason, end.reason
            outcomes["ended_with_reason"] += 1
        else:
            outcomes["decoded"] += 1
        path.unlink()
    seconds = time.perf_counter() - t0
    deadline = time.time() + 10
    while threading.active_count() > threads_before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before  # every decode thread ended
    assert outcomes["refused"] + outcomes["ended_with_reason"] > 0  # the mutations do bite
    out = Path(__file__).parent / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "fuzz_media.json").write_text(json.dumps(
        {"mutations": MUTATIONS, "outcomes": outcomes, "kinds": kinds, "seconds": seconds},
        indent=1,
    ))


def patched_wav(src: Path, dst: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    dst.write_bytes(data)
    return dst


def test_absurd_sample_rates_and_channels_are_refused(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    wav = clips[".wav"]
    with pytest.raises(SourceError, match="1 Hz, outside"):
        read_all(patched_wav(wav, tmp_path / "r1.wav", 24, "<I", 1))
    with pytest.raises(SourceError):
        read_all(patched_wav(wav, tmp_path / "r4g.wav", 24, "<I", 4_000_000_000))
    items, _ = read_all(patched_wav(wav, tmp_path / "c50.wav", 22, "<H", 50))
    check_items(items)
    assert items[-1].reason and "could be decoded: its data is corrupt" in items[-1].reason
    with pytest.raises(SourceError, match="max_sample_rate"):
        read_all(wav, limits=MediaLimits(max_sample_rate=16000))


def test_absurd_resolutions_are_refused_or_skipped(tmp_path: Path) -> None:
    y4m = tmp_path / "huge.y4m"
    y4m.write_bytes(b"YUV4MPEG2 W30000 H30000 F30:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 65536)
    with pytest.raises(SourceError):
        read_all(y4m)
    wide = make_clip(tmp_path / "wide.mp4", 1.0, size=(1280, 64), audio=False)
    with pytest.raises(SourceError, match=r"1280x64 video, beyond"):
        read_all(wide, limits=MediaLimits(max_width=1024))
    # a stream whose frames grow beyond the limit mid-stream: those frames are not decoded,
    # the small ones before are, and a run of refusals ends the stream with the reason
    small = make_clip(tmp_path / "small.ts", 2.0, size=(160, 120), audio=False)
    big = make_clip(tmp_path / "big.ts", 2.0, size=(640, 480), audio=False)
    grown = tmp_path / "grown.ts"
    grown.write_bytes(small.read_bytes() + big.read_bytes())
    limits = MediaLimits(max_pixels=160 * 120 * 2, max_corrupt_packets=20)
    items, source = read_all(grown, limits=limits)
    check_items(items)
    frames = [i for i in items if isinstance(i, VideoFrame)]
    assert frames and all(f.image.shape[:2] == (120, 160) for f in frames)
    assert items[-1].reason and "changed to 640x480 video, beyond" in items[-1].reason


def test_timestamps_jumping_hours_ahead_and_going_back(tmp_path: Path) -> None:
    jump = make_clip(tmp_path / "jump.mkv", 4.0, gap_at=2.0, gap_seconds=3 * 3600)
    items, _ = read_all(jump)
    check_items(items)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].end - gaps[0].start > 3 * 3600 - 5
    snippeter = Snippeter("s", 2.0)
    snippets = [s for i in items[:-1] for s in snippeter.push(i)] + snippeter.flush()
    assert len(snippets) <= 4  # three hours of nothing are skipped, not filled
    # two recordings back to back: the second's clock starts again at 0
    a = make_clip(tmp_path / "a.ts", 3.0)
    b = make_clip(tmp_path / "b.ts", 3.0, size=(160, 120))
    back = tmp_path / "back.ts"
    back.write_bytes(a.read_bytes() + b.read_bytes())
    items, _ = read_all(back)
    check_items(items)  # times keep going forward
    audio = [i for i in items if isinstance(i, AudioChunk)]
    assert audio[-1].t > 4.5  # the second recording continues the first


def test_a_codec_change_mid_stream(tmp_path: Path) -> None:
    h264 = make_clip(tmp_path / "a.ts", 2.0)
    mpeg2 = tmp_path / "b.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(h264), "-c:v", "mpeg2video",
                    "-c:a", "mp2", str(mpeg2)], check=True, timeout=60)
    for name, parts in (("ab", (h264, mpeg2)), ("ba", (mpeg2, h264))):
        joined = tmp_path / f"{name}.ts"
        joined.write_bytes(b"".join(p.read_bytes() for p in parts))
        items, source = read_all(joined)
        check_items(items)
        assert any(isinstance(i, VideoFrame) for i in items)
        assert source.counters.decode_errors > 0  # the other codec's packets were refused, counted
        assert items[-1].reason is None or items[-1].reason.endswith(".")


def many_tracks(path: Path, tracks: int) -> Path:
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=10)
    video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
    audio = []
    for _ in range(tracks):
        a = out.add_stream("pcm_s16le", rate=16000)
        a.layout = "mono"
        audio.append(a)
    rng = np.random.default_rng(0)
    for n in range(20):
        frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), n * 10, np.uint8), "rgb24")
        frame.pts = n
        out.mux(video.encode(frame))
        for k, a in enumerate(audio):
            pcm = (rng.standard_normal((1, 1600)) * 300 * (k + 1)).astype(np.int16)
            af = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = 16000, n * 1600, Fraction(1, 16000)
            out.mux(a.encode(af))
    out.mux(video.encode(None))
    out.close()
    return path


def test_fifty_audio_tracks(tmp_path: Path) -> None:
    path = many_tracks(tmp_path / "fifty.mkv", 50)
    items, source = read_all(path, limits=MediaLimits(max_tracks=64))
    check_items(items)
    assert items[-1].reason is None
    seconds = sum(len(i.samples) for i in items if isinstance(i, AudioChunk)) / 16000
    assert 1.8 <= seconds <= 2.1  # one track is used, not fifty mixed or queued
    with pytest.raises(SourceError, match="max_tracks"):
        read_all(path, limits=MediaLimits(max_tracks=16))


def test_limits_on_duration_and_bitrate(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4", 3.0)
    with pytest.raises(SourceError, match="max_duration"):
        read_all(clip, limits=MediaLimits(max_duration=2.0))
    with pytest.raises(SourceError, match="max_bitrate"):
        read_all(clip, limits=MediaLimits(max_bitrate=1000.0))
    # a header that lies about the duration is caught where the media runs past the limit
    jump = make_clip(tmp_path / "j.ts", 4.0, gap_at=2.0, gap_seconds=3600)
    try:
        items, _ = read_all(jump, limits=MediaLimits(max_duration=1800.0, max_bitrate=1e9))
    except SourceError as e:  # the container states the true length: refused at once
        assert "max_duration" in str(e)
    else:
        assert items[-1].reason and "max_duration" in items[-1].reason
        assert all(getattr(i, "t", 0.0) <= 1800.0 for i in items)


@pytest.fixture(scope="module")
def light_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamManager]:
    root = tmp_path_factory.mktemp("isolation") / "memory"
    settings = load_settings(memory=root)
    settings.perception = PerceptionSettings(asr=False, ocr=False, faces=False)
    settings.media = MediaLimits(max_tracks=64)  # fifty audio tracks: one is used
    store = MemoryStore(root, settings.store)
    manager = StreamManager(settings, store, Perception(settings.perception))
    yield manager
    store.close()


async def test_a_hostile_stream_leaves_the_others_alone(
    light_service: StreamManager, clips: dict[str, Path], tmp_path: Path
) -> None:
    manager = light_service
    good = make_clip(tmp_path / "good.mp4", 4.0, size=(160, 120))
    hostile = tmp_path / "hostile.mp4"
    data = bytearray(good.read_bytes())
    rng = random.Random(7)
    for _ in range(3000):  # a valid container whose media is mostly random bytes
        data[rng.randrange(2000, len(data))] = rng.randrange(256)
    hostile.write_bytes(data)
    fifty = many_tracks(tmp_path / "fifty.mkv", 50)
    empty = tmp_path / "nothing.mp4"
    empty.write_bytes(b"\x00" * 4096)
    pipelines = [
        await manager.start(str(empty), "empty"),
        await manager.start(str(good), "good"),
        await manager.start(str(hostile), "hostile"),
        await manager.start(str(fifty), "fifty"),
    ]
    tasks = [manager.tasks[p.stream] for p in pipelines]
    statuses = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    by = {s.stream: s for s in statuses}
    assert by["good"].state == "done" and by["good"].error is None and by["good"].snippets == 2
    assert by["fifty"].state == "done" and by["fifty"].snippets == 1
    assert by["empty"].state == "error" and "could not be read as media" in str(by["empty"].error)
    assert by["hostile"].state in ("done", "error")
    assert by["hostile"].error is None or by["hostile"].error.endswith(".")
    again = await manager.start(str(good), "good2")  # the service goes on taking streams
    assert (await manager.tasks[again.stream]).snippets == 2
