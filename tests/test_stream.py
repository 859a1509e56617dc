"""Sources: every container decodes on one clock; bad inputs give one clear sentence."""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import math
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livesense.drop_policy import DropPolicy
from livesense.errors import ConfigError, SourceError
from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.stream import Handoff, Source, open_source
from tests.media import (
    CONTAINERS,
    SPEECH_WAV,
    Item,
    audio_seconds,
    make_clip,
    marker_frame,
    marker_time,
    split_items,
    tone_second,
    truncate_copy,
)

FPS = 30


async def read_all(source: Source) -> list[Item]:
    return [item async for item in source.items()]


def read(url: str | Path, **kw: object) -> tuple[Source, list[Item]]:
    source = open_source(str(url), **kw)  # type: ignore[arg-type]
    return source, asyncio.run(read_all(source))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3 s clip in every container (one per suffix), made once for this module."""
    root = tmp_path_factory.mktemp("clips")
    return {suffix: make_clip(root / f"clip{suffix}", 3.0) for suffix in CONTAINERS}


@pytest.mark.parametrize("suffix", sorted(CONTAINERS))
def test_each_container_decodes_with_true_times(clips: dict[str, Path], suffix: str) -> None:
    source, items = read(clips[suffix])
    frames, chunks, gaps, ends = split_items(items)
    assert ends == [EndOfStream(None)] and isinstance(items[-1], EndOfStream)
    assert gaps == []
    assert not source.live and source.wall_anchor is None
    assert source.duration == pytest.approx(3.0, abs=0.1)
    # audio: 3 s at 16 kHz mono float32, contiguous, each second at its own pitch
    assert source.has_audio
    assert audio_seconds(chunks) == pytest.approx(3.0, abs=0.05)
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.t == pytest.approx(a.t + len(a.samples) / AUDIO_RATE, abs=1e-6)
    audio = np.concatenate([c.samples for c in chunks])
    start = int(round(chunks[0].t * AUDIO_RATE))
    for second in range(3):
        middle = audio[
            second * AUDIO_RATE - start + 2000 : (second + 1) * AUDIO_RATE - start - 2000
        ]
        assert tone_second(middle) == second
    if suffix in (".wav", ".mp3", ".ogg"):
        assert not source.has_video and frames == []
        return
    # video: sampled at 2 fps by time (the first decoded frame of each half second; frames
    # nothing refers to are not even decoded), RGB uint8, each picture showing its own time
    assert source.has_video and 30 <= source.counters.frames_decoded <= 90
    assert [math.floor(f.t * 2) for f in frames] == [0, 1, 2, 3, 4, 5]
    assert all(f.t - math.floor(f.t * 2) / 2 < 0.15 for f in frames)
    for f in frames:
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
        assert marker_time(f.image, FPS) == pytest.approx(f.t, abs=1.5 / FPS)


def test_video_only_and_audio_only(tmp_path: Path) -> None:
    source, items = read(make_clip(tmp_path / "v.mp4", 2.0, audio=False))
    frames, chunks, _, _ = split_items(items)
    assert source.has_video and not source.has_audio
    assert len(frames) == 4 and chunks == []
    assert frames[0].t == 0.0 and marker_frame(frames[-1].image) == 45

    source, items = read(make_clip(tmp_path / "a.mkv", 2.0, video=False))
    frames, chunks, _, _ = split_items(items)
    assert source.has_audio and not source.has_video
    assert frames == [] and audio_seconds(chunks) == pytest.approx(2.0, abs=0.05)


def test_speech_clip_with_text(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "talk.mp4", 8.0, speech_wav=SPEECH_WAV, text="PLATFORM 9")
    frames, chunks, _, _ = split_items(read(clip)[1])
    audio = np.concatenate([c.samples for c in chunks])
    assert np.sqrt(np.mean(audio[: 6 * AUDIO_RATE] ** 2)) > 0.03  # 6.7 s of speech ...
    assert np.sqrt(np.mean(audio[7 * AUDIO_RATE :] ** 2)) < 0.005  # ... then silence
    middle = frames[0].image[90:150, 40:280]
    assert (middle < 60).mean() > 0.05 and (middle > 200).mean() > 0.5  # black text on white


def test_frames_are_sampled_by_time_and_downscaled(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "hd.mkv", 1.0, size=(1280, 720), audio=False)
    source, items = read(clip, fps=10.0, max_side=640)
    frames = split_items(items)[0]
    assert [round(f.t, 2) for f in frames] == [i / 10 for i in range(10)]
    assert {f.image.shape for f in frames} == {(360, 640, 3)}
    assert [marker_frame(f.image) for f in frames] == list(range(0, 30, 3))
    assert source.counters.frames_decoded == 30 and source.counters.frames_sampled == 10

    frames = split_items(read(clip, fps=1.0, max_side=101)[1])[0]
    h, w, _ = frames[0].image.shape
    assert w <= 101 and w % 2 == 0 and h % 2 == 0 and abs(w / h - 16 / 9) < 0.1


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_rotated_phone_video_comes_out_upright(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "flat.mp4", 1.0, audio=False)
    rotated = tmp_path / "phone.mp4"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(clip), "-c", "copy"]
        + ["-metadata:s:v", "rotate=90", str(rotated)],
        check=True,
    )
    frames = split_items(read(rotated)[1])[0]
    assert {f.image.shape for f in frames} == {(320, 240, 3)}
    for f in frames:  # the marker bar, at the bottom of the stored picture, is now on the right
        assert f.image[:, -20:].mean() < f.image[:, :20].mean()
        assert marker_frame(np.rot90(f.image, -1)) == round(f.t * FPS)


def test_pts_jump_gives_one_gap_and_keeps_true_times(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "gap.mkv", 4.0, gap_at=2.0, gap_seconds=3600.0)
    _, items = read(clip)
    frames, chunks, gaps, _ = split_items(items)
    assert len(gaps) == 1
    assert gaps[0].start == pytest.approx(2.0, abs=0.05)
    assert gaps[0].end == pytest.approx(3602.0, abs=0.05)
    assert items.index(gaps[0]) < items.index(next(c for c in chunks if c.t > 3000))
    assert [round(f.t * 2) / 2 for f in frames] == [0, 0.5, 1, 1.5, 3602, 3602.5, 3603, 3603.5]
    for f in frames:  # later media keep their true times: the pictures agree
        assert marker_time(f.image, FPS) == pytest.approx(f.t, abs=1.5 / FPS)
    after = [c for c in chunks if c.t > 3000]
    assert after[0].t == pytest.approx(3602.0, abs=0.05)
    assert audio_seconds(chunks) == pytest.approx(4.0, abs=0.05)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over a folder: (folder, base URL)."""
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_http_progressive_and_hls(web_root: tuple[Path, str]) -> None:
    root, base = web_root
    clip = make_clip(root / "clip.mp4", 3.0)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(clip), "-c", "copy", "-f", "hls"]
        + ["-hls_time", "1", "-hls_playlist_type", "vod", str(root / "clip.m3u8")],
        check=True,
    )
    for name in ("clip.mp4", "clip.m3u8"):
        source, items = read(f"{base}/{name}", timeout=5.0)
        frames, chunks, gaps, ends = split_items(items)
        assert not source.live and ends == [EndOfStream(None)] and gaps == []
        assert source.has_audio and source.has_video
        assert len(frames) == 6 and audio_seconds(chunks) == pytest.approx(3.0, abs=0.1)
        for f in frames:
            assert marker_time(f.image, FPS) == pytest.approx(f.t, abs=1.5 / FPS)
    with pytest.raises(SourceError, match="404"):
        open_source(f"{base}/nothing.mp4", timeout=5.0)


def one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    assert len(message) < 300


def test_bad_files_raise_one_sentence(tmp_path: Path) -> None:
    good = make_clip(tmp_path / "good.mp4", 2.0)
    text = tmp_path / "notes.txt"
    text.write_text("shopping list\n" * 50)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 40_000, np.uint8).tobytes())
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "missing.mp4": "does not exist",
        tmp_path: "is a directory",
        empty: "is empty",
        noise: "could not be read as media",
        truncate_copy(good, tmp_path / "cut.mp4", 0.5): "could not be read as media",
        text: "not audio or video",
    }
    for path, words in cases.items():
        with pytest.raises(SourceError) as err:
            open_source(str(path))
        one_sentence(str(err.value))
        assert words in str(err.value) and str(path) in str(err.value)


def test_bad_settings_raise_config_errors(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.wav", 0.5)
    for kw in ({"fps": 0.0}, {"max_side": 4}, {"queue_size": 1}, {"timeout": 0.0}):
        with pytest.raises(ConfigError):
            open_source(str(clip), **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        open_source("rtsp://127.0.0.1:1/x", rtsp_transport="carrier-pigeon")


def test_truncated_file_yields_what_decodes_then_ends_with_a_reason(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mkv", 6.0)
    cut = truncate_copy(clip, tmp_path / "cut.mkv", 0.5)
    _, items = read(cut)
    frames, chunks, _, ends = split_items(items)
    assert 4 <= len(frames) <= 8 and 2.0 <= audio_seconds(chunks) <= 4.0
    for f in frames:
        assert marker_time(f.image, FPS) == pytest.approx(f.t, abs=1.5 / FPS)
    assert isinstance(items[-1], EndOfStream) and ends[0].reason is not None
    assert "truncated" in ends[0].reason
    one_sentence(ends[0].reason)


def test_realtime_paces_a_file_like_a_live_source(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "rt.mkv", 2.0)

    async def timed() -> tuple[Source, list[tuple[float, Item]], float]:
        source = open_source(str(clip), realtime=True)
        began = time.monotonic()
        got = [(time.monotonic() - began, item) async for item in source.items()]
        return source, got, time.monotonic() - began

    source, got, took = asyncio.run(timed())
    assert 1.8 <= took <= 3.0
    for arrived, item in got:  # nothing comes before its time on the stream clock
        if isinstance(item, VideoFrame | AudioChunk):
            assert arrived >= item.t - 0.1
    assert source.wall_anchor is not None
    assert abs(source.wall_anchor - (time.time() - took)) < 0.5

    fast_began = time.monotonic()
    read(clip)
    assert time.monotonic() - fast_began < 1.5


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_unreachable_urls_fail_within_the_timeout(silent_server: int, scheme: str) -> None:
    began = time.monotonic()
    with pytest.raises(SourceError) as err:
        open_source(f"{scheme}://user:secret@127.0.0.1:{silent_server}/cam", timeout=1.0)
    assert time.monotonic() - began < 3.0
    one_sentence(str(err.value))
    assert "within 1 s" in str(err.value) and "secret" not in str(err.value)

    port = closed_port()
    began = time.monotonic()
    with pytest.raises(SourceError, match="refused"):
        open_source(f"{scheme}://127.0.0.1:{port}/cam", timeout=5.0)
    assert time.monotonic() - began < 2.0


def test_device_urls_are_mapped_or_refused_clearly() -> None:
    for url in ("v4l2:///dev/no-such-camera", "alsa://no-such-card", "pulse://no-such-sink"):
        with pytest.raises(SourceError) as err:
            open_source(url, timeout=2.0)
        one_sentence(str(err.value))
        assert any(w in str(err.value) for w in ("v4l2", "alsa", "pulse", "device"))


def test_stopping_early_ends_the_decode_thread(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mkv", 6.0, size=(160, 120))

    async def first_items() -> Source:
        source = open_source(str(clip), queue_size=4)
        async for item in source.items():
            if isinstance(item, VideoFrame):
                break
        return source

    before = {t.name for t in threading.enumerate()}
    source = asyncio.run(first_items())
    deadline = time.monotonic() + 5
    while any(t.name.startswith("decode") and t.name not in before for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the decode thread kept running after close()"
        time.sleep(0.05)
    assert source.counters.frames_decoded < 180


def test_live_handoff_drops_oldest_video_first_and_counts() -> None:
    async def scenario() -> tuple[Handoff, list[Item]]:
        handoff = Handoff(4, asyncio.get_running_loop(), DropPolicy.DROP_OLDEST)
        v = [VideoFrame(i * 0.5, np.zeros((2, 2, 3), np.uint8)) for i in range(3)]
        a = [AudioChunk(i * 0.1, np.zeros(1600, np.float32)) for i in range(4)]
        sequence: list[Item] = [v[0], a[0], v[1], a[1], a[2], v[2], a[3], Gap(1, 3)]
        for item in sequence:  # the writer never blocks
            assert await asyncio.to_thread(handoff.put, item)
        got = [await handoff.get() for _ in range(handoff.qsize())]
        return handoff, got

    handoff, got = asyncio.run(scenario())
    # full at 4: a[2] pushes out v0, v[2] pushes out v1, a[3] pushes out v2, the gap out a0
    assert handoff.video_drops == 3 and handoff.audio_drops == 1 and handoff.drops == 4
    assert [type(i).__name__ for i in got] == ["AudioChunk", "AudioChunk", "AudioChunk", "Gap"]
    assert [i.t for i in got if isinstance(i, AudioChunk)] == pytest.approx([0.1, 0.2, 0.3])


def test_file_handoff_waits_and_never_drops() -> None:
    async def scenario() -> tuple[Handoff, list[float], float]:
        handoff = Handoff(2, asyncio.get_running_loop(), DropPolicy.WAIT)
        chunks = [AudioChunk(float(i), np.zeros(10, np.float32)) for i in range(6)]

        def writer() -> float:
            began = time.monotonic()
            for c in chunks:
                handoff.put(c)
            return time.monotonic() - began

        job = asyncio.create_task(asyncio.to_thread(writer))
        got = []
        for _ in chunks:
            await asyncio.sleep(0.05)  # a slow reader: the writer has to wait for room
            item = await handoff.get()
            assert isinstance(item, AudioChunk)
            got.append(item.t)
        return handoff, got, await job

    handoff, got, waited = asyncio.run(scenario())
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and handoff.drops == 0
    assert waited >= 0.15


async def test_capture_source_reads_frames_through_opencv(tmp_path: Path) -> None:
    """The V4L2 path (OpenCV) samples, downscales and stamps frames like any live source.

    No camera exists here, so the same capture loop reads a file through OpenCV's FFmpeg
    backend; the device itself is opened with cv2.CAP_V4L2.
    """
    import cv2

    from livesense.stream.capture import CaptureSource

    clip = tmp_path / "cam.mp4"
    make_clip(clip, seconds=1.0, audio=False, size=(1280, 720))
    src = CaptureSource(str(clip), fps=30.0, max_side=320, backend=cv2.CAP_FFMPEG)
    frames = [it async for it in src.items() if isinstance(it, VideoFrame)]
    assert frames and frames[0].image.shape == (180, 320, 3)
    assert src.live and src.wall_anchor is not None and not src.has_audio
    assert all(b.t > a.t for a, b in itertools.pairwise(frames))


def test_missing_v4l2_device_is_one_sentence() -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source("v4l2:///dev/video99")
