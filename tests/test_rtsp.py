"""RTSP ingest from a real server (ffmpeg RTP relayed by tests.media.RtspServer)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from livesense.errors import SourceError
from livesense.pipeline.snippeter import Snippeter
from livesense.records import AUDIO_RATE, EndOfStream, Snippet, VideoFrame
from livesense.stream import Source, open_source
from tests.media import RtspServer, make_clip, marker_time, tone_second

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

FPS = 30


def connect(url: str, **kw: object) -> Source:
    """Open the RTSP URL, retrying while the server comes up."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return open_source(url, timeout=5.0, **kw)  # type: ignore[arg-type]
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def ingest(source: Source, pause: float = 0.0) -> tuple[list[Snippet], EndOfStream]:
    snippeter = Snippeter("cam", 2.0, source.has_audio, source.has_video)
    out: list[Snippet] = []
    async for item in source.items():
        if isinstance(item, EndOfStream):
            return out + snippeter.flush(), item
        if snippeter.wall_anchor is None:
            snippeter.wall_anchor = source.wall_anchor
        if pause:
            await asyncio.sleep(pause)  # a slow consumer (the decoder must not wait for it)
            pause = 0.0
        out += snippeter.push(item)
    raise AssertionError("items() ended without EndOfStream")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("rtsp") / "clip.mp4", 4.0)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_stream_gives_aligned_live_snippets(clip: Path, transport: str) -> None:
    with RtspServer(clip) as server:
        began = time.time()
        source = connect(server.url, rtsp_transport=transport)
        assert source.live and source.has_audio and source.has_video
        snippets, end = asyncio.run(ingest(source))
    took = time.time() - began
    assert end.reason is None and 3.5 < took < 10  # served in real time (ffmpeg -re)
    c = source.counters
    assert c.drops == 0 and c.frames_decoded >= 30  # joins at a keyframe
    assert source.wall_anchor is not None and abs(source.wall_anchor - began) < 2.0
    full = [s for s in snippets if not s.missing]
    assert len(full) >= 2
    for s in snippets:
        assert s.wall == pytest.approx(source.wall_anchor + s.start, abs=0.6)
        assert s.audio is not None and len(s.audio) == 2 * AUDIO_RATE
    # picture and sound stay in step: around each frame, the tone names the frame's second
    checked = 0
    for s in full:
        assert s.audio is not None
        for f in s.frames:
            shown = marker_time(f.image, FPS)
            if not 0.2 < shown % 1 < 0.8:
                continue
            at = int(round((f.t - s.start) * AUDIO_RATE))
            window = s.audio[max(0, at - 1600) : at + 1600]
            if len(window) == 3200:
                assert tone_second(window) == int(shown), (f.t, shown)
                checked += 1
    assert checked >= 3


def test_rtsp_slow_reader_loses_video_first_not_the_stream(clip: Path) -> None:
    with RtspServer(clip) as server:
        source = connect(server.url, queue_size=8)
        snippets, end = asyncio.run(ingest(source, pause=2.0))
    assert end.reason is None
    c = source.counters
    assert c.drops > 0 and c.video_drops >= 1  # counted, oldest video first
    assert c.drops == c.video_drops + c.audio_drops
    assert snippets and any(isinstance(f, VideoFrame) for s in snippets for f in s.frames)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, seconds: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.skipif(
    shutil.which("rtsp-server-perl") is None, reason="Debian's rtsp-server-perl is not installed"
)
def test_rtsp_from_a_real_rtsp_server(clip: Path) -> None:
    """ffmpeg publishes (ANNOUNCE/RECORD) to Debian's RTSP server; livesense plays from it.

    That server relays RTP over UDP only, so this is the UDP transport against a server that
    is not ours; the TCP-interleaved path is covered by tests.media.RtspServer above.
    """
    import subprocess

    client, publish = _free_port(), _free_port()
    server = subprocess.Popen(
        ["rtsp-server-perl", "--clientport", str(client), "--serverport", str(publish),
         "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1",
         "--rtp_start_port", str(20000 + client % 20000), "-l", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pusher: subprocess.Popen[bytes] | None = None
    try:
        _wait_listening(publish)
        pusher = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "rtsp",
             f"rtsp://127.0.0.1:{publish}/live"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        source = connect(f"rtsp://127.0.0.1:{client}/live", rtsp_transport="udp")
        assert source.live and source.has_audio and source.has_video
        snippets, end = asyncio.run(ingest(source))
        # The relay never says the publisher left: the stream ends as a stalled live source.
        assert end.reason is None or "no data" in end.reason
        assert source.wall_anchor is not None and max(s.end for s in snippets) >= 3.5
        assert any(s.frames for s in snippets) and any("audio" not in s.missing for s in snippets)
        assert all(s.wall == pytest.approx(source.wall_anchor + s.start, abs=0.6) for s in snippets)
    finally:
        for proc in (pusher, server):
            if proc is not None:
                proc.terminate()
                proc.wait(5)
