"""WHIP media held to the media limits (media.*), like files and URLs: real aiortc publishers
over real sockets; the one beyond a limit ends with its reason, the others go on."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from livesense.stream.media_guard import MediaGuard
from tests.test_whip import (
    AUTH,
    LiveServer,
    NumberTrack,
    ToneTrack,
    publish,
    server_settings,
    wait_for,
)

aiortc = pytest.importorskip("aiortc", reason="WebRTC tests need the webrtc extra (aiortc)")


def small_track() -> NumberTrack:
    """160x120 video with a moving bar: within the limits of the test."""
    return NumberTrack(160, 120)


class GrowingTrack(NumberTrack):
    """160x120 for the first `small` frames, then 320x240 (a resolution change mid-stream)."""

    def __init__(self, small: int) -> None:
        super().__init__(160, 120)
        self.small = small

    async def recv(self) -> Any:
        frame = await super().recv()
        if self.count <= self.small:
            return frame
        big = frame.reformat(width=320, height=240)
        big.pts, big.time_base = frame.pts, frame.time_base
        return big


def test_live_checks_give_one_reason_each() -> None:
    from livesense.config import MediaLimits

    guard = MediaGuard(MediaLimits(max_width=200, max_duration=5.0), "pub", live=True)
    assert guard.live_frame(160, 120) is None
    assert "320x240 video" in (guard.live_frame(320, 240) or "")
    assert guard.live_audio(48000, 2) is None
    assert "12 Hz" in (guard.live_audio(12, 1) or "")
    assert "65 audio channels" in (guard.live_audio(48000, 65) or "")
    assert guard.published(4.9) is None and "media.max_duration" in (guard.published(5.1) or "")
    # RTP payload bytes on the arrival clock: 40 kbit/s against a 30 kbit/s limit
    guard = MediaGuard(MediaLimits(max_bitrate=30_000), "pub", live=True)
    reasons = [guard.received(500, 1000.0 + i / 10) for i in range(101)]
    assert reasons[:-1] == [None] * 100 and "media.max_bitrate" in (reasons[-1] or "")


async def test_whip_media_beyond_the_limits_ends_that_stream_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = server_settings(
        tmp_path / "memory",
        **{
            "perception.asr": False,
            "perception.ocr": False,
            "media.max_width": 200,
            "media.max_height": 200,
            "media.max_sample_rate": 44_100,  # Opus arrives decoded at 48 kHz: beyond it
            "media.max_duration": 8.0,
        },
    )
    caplog.set_level(logging.WARNING, logger="livesense")
    with LiveServer(settings) as live:
        pc_fine, r = await publish(live.url, "fine", [small_track()])
        assert r.status_code == 201, r.text
        pc_big, r = await publish(live.url, "big", [NumberTrack()])  # 320x240 from the start
        assert r.status_code == 201, r.text
        pc_grow, r = await publish(live.url, "grow", [GrowingTrack(small=12)])
        assert r.status_code == 201, r.text
        pc_tone, r = await publish(live.url, "tone", [ToneTrack()])
        assert r.status_code == 201, r.text
        t0 = time.time()

        def ended(stream: str) -> str | None:
            status = live.status(stream)
            return status.get("error") if status.get("state") in ("done", "error") else None

        big = await wait_for(lambda: ended("big"), 20, "the 320x240 publisher to be ended")
        assert "320x240 video, beyond the limit of 200x200" in big and "(media.max_*)" in big
        grow = await wait_for(lambda: ended("grow"), 20, "the growing publisher to be ended")
        assert "320x240 video" in grow
        assert live.status("grow")["snippets"] >= 1  # it was fine until its frames grew
        tone = await wait_for(lambda: ended("tone"), 20, "the 48 kHz publisher to be ended")
        assert "48000 Hz" in tone and "media.min/max_sample_rate" in tone
        # the publisher within the limits goes on meanwhile, and the service answers
        fine_before = live.status("fine")["snippets"]
        assert live.status("fine")["state"] == "running" and ended("fine") is None
        async with httpx.AsyncClient(base_url=live.url, headers=AUTH, timeout=30) as c:
            assert (await c.get("/healthz")).status_code == 200
            streams = {s["stream"]: s for s in (await c.get("/v1/streams")).json()["streams"]}
            assert streams["big"]["ingest"]["error"] == big
            await wait_for(
                lambda: live.status("fine")["snippets"] >= fine_before + 1, 10, "fine to go on"
            )
            # ... until its session has lasted media.max_duration
            fine = await wait_for(lambda: ended("fine"), 30, "the long session to be ended")
            assert "media.max_duration" in fine and time.time() - t0 >= 7.0
        await asyncio.gather(pc_fine.close(), pc_big.close(), pc_grow.close(), pc_tone.close())
    logged = [r.getMessage() for r in caplog.records]
    assert sum(big in m for m in logged) >= 1 and sum(tone in m for m in logged) >= 1
