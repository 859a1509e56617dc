"""What every source promises, checked against each backend that runs here: PyAV on a file,
the capture-device loop (OpenCV reading a file), and the reconnecting wrapper."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from livesense.errors import SourceError
from livesense.records import AudioChunk, EndOfStream, VideoFrame
from livesense.stream import Source, SourceCounters, open_source
from livesense.stream.reconnect import ReconnectingSource
from tests.media import Item, make_clip

Maker = Callable[[], Source]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 2.0)


def pyav(clip: Path) -> Maker:
    return lambda: open_source(str(clip), fps=5.0)


def capture(clip: Path) -> Maker:
    import cv2

    from livesense.stream.capture import CaptureSource

    # The capture clock is the wall clock and a file reads fast: sample every frame.
    return lambda: CaptureSource(str(clip), fps=10_000.0, backend=cv2.CAP_FFMPEG)


def reconnecting(clip: Path) -> Maker:
    def gone() -> Source:
        raise SourceError("The file went away.")

    return lambda: ReconnectingSource(pyav(clip)(), gone, initial=0.01, attempts=1)


BACKENDS = {"pyav": pyav, "capture": capture, "reconnecting": reconnecting}


@pytest.fixture(params=sorted(BACKENDS))
def make(request: pytest.FixtureRequest, clip: Path) -> Maker:
    return BACKENDS[request.param](clip)


async def read(source: Source) -> list[Item]:
    return [item async for item in source.items()]


def test_items_come_in_time_order_and_end_once_with_counters_that_match(make: Maker) -> None:
    source = make()
    assert isinstance(source, Source) and isinstance(source.counters, SourceCounters)
    items = asyncio.run(read(source))
    ends = [i for i in items if isinstance(i, EndOfStream)]
    assert len(ends) == 1 and items[-1] is ends[0]
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    assert source.has_video and len(frames) >= 8  # 2 s, at least 5 frames a second
    assert all(b.t > a.t for a, b in itertools.pairwise(frames))
    assert all(b.t >= a.t for a, b in itertools.pairwise(chunks))
    assert bool(chunks) == source.has_audio
    c = source.counters
    assert c.frames_sampled == len(frames) and c.frames_decoded >= len(frames)
    assert c.audio_chunks == len(chunks) and c.drops == c.video_drops + c.audio_drops
    assert c.as_json()["frames_sampled"] == len(frames)


def test_a_source_is_read_once_and_closing_ends_it(make: Maker) -> None:
    source = make()

    async def first_then_close() -> list[Item]:
        got: list[Item] = []
        async for item in source.items():
            got.append(item)
            if len(got) == 2:
                source.close()
            if isinstance(item, EndOfStream):
                break
        return got

    got = asyncio.run(asyncio.wait_for(first_then_close(), 20))
    assert len(got) >= 2 and len(got) < 20  # it stopped soon after close()
    source.close()  # idempotent

    async def again() -> list[Item]:
        return await read(source)

    with pytest.raises(Exception, match="already being read"):
        asyncio.run(again())
