"""Snippeter and StreamClock: aligned, sample-exact windows; gaps skipped, not multiplied."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from livesense.errors import ConfigError
from livesense.pipeline.snippeter import Snippeter
from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap, Snippet, VideoFrame
from livesense.stream import StreamClock, open_source
from tests.media import make_clip, marker_time, tone_second

FPS = 30
N = 2 * AUDIO_RATE  # samples in a 2 s snippet
RAMP = 2**20


def frame(t: float) -> VideoFrame:
    return VideoFrame(t, np.full((4, 4, 3), int(t * 10) % 256, np.uint8))


def ramp_chunks(
    start: float, seconds: float, sizes: tuple[int, ...] = (1000, 371, 2048)
) -> list[AudioChunk]:
    """Audio whose every sample holds its index on the stream clock (mod 2**20, exact in
    float32), in odd-sized chunks."""
    first = int(round(start * AUDIO_RATE))
    total = int(round(seconds * AUDIO_RATE))
    out, done, i = [], 0, 0
    while done < total:
        n = min(sizes[i % len(sizes)], total - done)
        samples = (np.arange(first + done, first + done + n) % RAMP).astype(np.float32)
        out.append(AudioChunk((first + done) / AUDIO_RATE, samples))
        done += n
        i += 1
    return out


def interleave(chunks: list[AudioChunk], frames: list[VideoFrame]) -> list[AudioChunk | VideoFrame]:
    return sorted([*chunks, *frames], key=lambda item: item.t)


def run(snippeter: Snippeter, items: list) -> list[Snippet]:
    out: list[Snippet] = []
    for item in items:
        out += snippeter.push(item)
    return out + snippeter.flush()


async def snippets_of(path: Path, **kw: object) -> list[Snippet]:
    source = open_source(str(path), **kw)  # type: ignore[arg-type]
    snippeter = Snippeter("clip", 2.0, source.has_audio, source.has_video, source.wall_anchor)
    out: list[Snippet] = []
    async for item in source.items():
        if isinstance(item, EndOfStream):
            break
        if snippeter.wall_anchor is None:
            snippeter.wall_anchor = source.wall_anchor
        out += snippeter.push(item)
    return out + snippeter.flush()


# ---- StreamClock ------------------------------------------------------------------------


def test_clock_origin_is_the_smallest_first_timestamp() -> None:
    clock = StreamClock(["audio", "video"])
    assert clock.offer("video", 10.5) is False  # still waiting for audio
    assert clock.offer("video", 10.4) is False
    assert clock.offer("audio", 10.45) is True
    assert clock.origin == pytest.approx(10.4)
    assert clock.stamp("audio", 10.45, 0.02)[0] == pytest.approx(0.05)
    assert StreamClock.seconds(90_000 * 3, Fraction(1, 90_000)) == 3.0
    assert StreamClock.seconds(None, Fraction(1, 1000)) is None


def test_clock_fixes_the_origin_when_a_stream_never_shows_up() -> None:
    clock = StreamClock(["audio", "video"], settle=1.0)
    assert not clock.offer("video", 5.0)
    assert not clock.offer("video", 5.5)
    assert clock.offer("video", 6.0)  # a second of video and no audio: go without it
    assert clock.origin == 5.0


def test_clock_reports_forward_jumps_of_the_lead_stream_only() -> None:
    clock = StreamClock(["audio", "video"], lead="audio", gap=1.0, origin=0.0)
    t = 0.0
    for _ in range(50):  # steady audio, 20 ms frames, a little jitter: no gap
        got, gap = clock.stamp("audio", t + 0.003, 0.02)
        assert gap is None
        t += 0.02
    got, gap = clock.stamp("audio", 3601.0, 0.02)
    assert got == 3601.0  # later media keep their true time
    assert gap is not None and gap.start == pytest.approx(1.0, abs=0.01) and gap.end == 3601.0
    clock.stamp("video", 0.0, 1 / 30)
    assert clock.stamp("video", 3601.0, 1 / 30) == (3601.0, None)  # video follows quietly


def test_clock_continues_through_backward_jumps_and_missing_timestamps() -> None:
    clock = StreamClock(["video"], gap=1.0, origin=100.0)
    assert clock.stamp("video", 100.0, 0.5)[0] == 0.0
    assert clock.stamp("video", 100.5, 0.5)[0] == 0.5
    assert clock.stamp("video", 20.0, 0.5) == (1.0, None)  # the source clock restarted
    assert clock.stamp("video", 20.5, 0.5)[0] == 1.5  # and keeps going from there
    assert clock.stamp("video", None, 0.5)[0] == 2.0
    assert clock.expected("video") == 2.5


# ---- Snippeter on synthetic items ---------------------------------------------------------


def test_audio_is_cut_sample_exactly_across_chunk_boundaries() -> None:
    snippeter = Snippeter("s", 2.0, has_video=False)
    out = run(snippeter, ramp_chunks(0.0, 7.0))
    assert [s.index for s in out] == [0, 1, 2, 3]
    for s in out:
        assert s.audio is not None and s.audio.dtype == np.float32 and len(s.audio) == N
        assert s.start == 2.0 * s.index and s.end == s.start + 2.0
        assert s.missing == {"video"} and not s.gap
    for s in out[:3]:
        np.testing.assert_array_equal(s.audio, np.arange(s.index * N, (s.index + 1) * N))
    last = out[3].audio
    assert last is not None
    np.testing.assert_array_equal(last[:AUDIO_RATE], np.arange(3 * N, 3 * N + AUDIO_RATE))
    assert not last[AUDIO_RATE:].any()  # the end of the stream is zero-filled


def test_odd_lengths_still_give_exact_sample_counts() -> None:
    snippeter = Snippeter("s", 0.7, has_video=False)
    out = run(snippeter, ramp_chunks(0.0, 3.0, sizes=(777,)))
    n = round(0.7 * AUDIO_RATE)
    assert all(s.audio is not None and len(s.audio) == n for s in out)
    joined = np.concatenate([s.audio for s in out if s.audio is not None])
    np.testing.assert_array_equal(joined[: 3 * AUDIO_RATE], np.arange(3 * AUDIO_RATE))


def test_frames_land_in_their_window_and_snippets_wait_for_both_modalities() -> None:
    snippeter = Snippeter("s", 2.0, wall_anchor=1000.0)
    assert snippeter.push(frame(0.0)) == []
    assert snippeter.push(frame(2.5)) == []  # video passed window 0, audio has not
    for chunk in ramp_chunks(0.0, 1.9):
        assert snippeter.push(chunk) == []
    out: list[Snippet] = []
    for chunk in ramp_chunks(1.9, 0.2):
        out += snippeter.push(chunk)
    assert [s.index for s in out] == [0]
    assert [f.t for f in out[0].frames] == [0.0] and out[0].missing == set()
    assert out[0].wall == 1000.0
    rest = snippeter.flush()
    assert [s.index for s in rest] == [1] and [f.t for f in rest[0].frames] == [2.5]
    assert rest[0].wall == 1002.0 and rest[0].missing == set()


def test_missing_modalities_are_marked() -> None:
    video_only = run(Snippeter("v", 2.0, has_audio=False), [frame(t / 2) for t in range(8)])
    assert [s.index for s in video_only] == [0, 1]
    for s in video_only:
        assert s.missing == {"audio"} and len(s.frames) == 4
        assert s.audio is not None and len(s.audio) == N and not s.audio.any()

    # audio present except for a silent hole in window 1, video missing in window 2
    items = interleave(
        ramp_chunks(0.0, 2.0) + ramp_chunks(4.0, 2.5),
        [frame(t / 2) for t in range(8)] + [frame(6.0)],
    )
    out = run(Snippeter("av", 2.0), items)
    assert [s.index for s in out] == [0, 1, 2, 3]
    assert [s.missing for s in out] == [set(), {"audio"}, {"video"}, set()]
    hole = out[1].audio
    assert hole is not None and len(hole) == N and not hole.any()


def test_an_hour_long_gap_is_skipped_and_later_snippets_keep_their_index() -> None:
    before = interleave(ramp_chunks(0.0, 3.0), [frame(t / 2) for t in range(6)])
    after = interleave(ramp_chunks(3603.0, 3.0), [frame(3603.0 + t / 2) for t in range(6)])
    snippeter = Snippeter("s", 2.0)
    out = run(snippeter, [*before, Gap(3.0, 3603.0), *after])
    assert [s.index for s in out] == [0, 1, 1801, 1802]  # not 1800 empty windows
    assert [s.gap for s in out] == [False, True, True, False]
    assert snippeter.skipped == 1799
    assert out[2].start == 3602.0 and [f.t for f in out[2].frames] == [3603.0, 3603.5]
    gap_window = out[2].audio
    assert gap_window is not None and not gap_window[:AUDIO_RATE].any()
    np.testing.assert_array_equal(
        gap_window[AUDIO_RATE:], np.arange(3603 * AUDIO_RATE, 3604 * AUDIO_RATE) % RAMP
    )


def test_a_stalled_modality_does_not_hold_snippets_forever() -> None:
    snippeter = Snippeter("s", 2.0, max_skew=10.0)
    out: list[Snippet] = []
    for chunk in ramp_chunks(0.0, 1.0):
        out += snippeter.push(chunk)
    for t in range(60):  # 30 s of video while the audio is silent
        out += snippeter.push(frame(t / 2))
    assert len(out) >= 9  # emitted while video ran ahead, not all at the end
    assert out[0].missing == set() and out[1].missing == {"audio"}
    assert len(snippeter._frames) <= 24  # bounded: max_skew + one window of frames at most


def test_late_items_and_bad_settings() -> None:
    snippeter = Snippeter("s", 2.0, has_audio=False)
    run(snippeter, [frame(0.0), frame(2.5), frame(4.5)])
    snippeter.push(frame(0.5))  # its window is long gone
    assert snippeter.late == 1
    with pytest.raises(ConfigError):
        Snippeter("s", 2.0, has_audio=False, has_video=False)
    with pytest.raises(TypeError):
        snippeter.push(EndOfStream())  # type: ignore[arg-type]


# ---- real media through the source --------------------------------------------------------


def test_picture_and_sound_agree_in_every_snippet(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "av.mkv", 6.0)
    out = asyncio.run(snippets_of(clip))
    assert [s.index for s in out] == [0, 1, 2]
    for s in out:
        assert s.missing == set() and not s.gap and s.wall is None
        assert s.audio is not None and len(s.audio) == N
        shown = [marker_time(f.image, FPS) for f in s.frames]
        assert shown == pytest.approx([f.t for f in s.frames], abs=1.5 / FPS)
        expected = [s.start, s.start + 0.5, s.start + 1.0, s.start + 1.5]
        assert all(0 <= a - b < 0.15 for a, b in zip(shown, expected, strict=True))
        first, second = int(s.start), int(s.start) + 1
        assert tone_second(s.audio[1000 : AUDIO_RATE - 1000]) == first
        assert tone_second(s.audio[AUDIO_RATE + 1000 : N - 1000]) == second


def test_real_pts_gap_keeps_later_snippets_true(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "gap.ts", 6.0, gap_at=3.0, gap_seconds=3600.0)
    out = asyncio.run(snippets_of(clip))
    assert [s.index for s in out] == [0, 1, 1801, 1802]
    late = out[2]
    assert late.gap and late.start == 3602.0
    assert [int(marker_time(f.image, FPS)) for f in late.frames] == [3603, 3603]
    last = out[3]
    assert last.audio is not None
    assert tone_second(last.audio[1000 : AUDIO_RATE - 1000]) == 3604 % 20
    assert tone_second(last.audio[AUDIO_RATE + 1000 : N - 1000]) == 3605 % 20


def test_audio_only_and_realtime_wall_times(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.ogg", 2.5)
    began = time.time()
    out = asyncio.run(snippets_of(clip, realtime=True))
    assert [s.index for s in out] == [0, 1]
    assert all(s.missing == {"video"} and s.frames == [] for s in out)
    assert out[0].audio is not None and tone_second(out[0].audio[1000:15000]) == 0
    assert out[0].wall is not None and out[1].wall is not None
    assert abs(out[0].wall - began) < 0.5 and out[1].wall - out[0].wall == pytest.approx(2.0)
