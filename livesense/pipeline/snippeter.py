"""Cuts a source's item sequence into fixed, time-aligned audio+video snippets."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from livesense.errors import ConfigError
from livesense.records import AUDIO_RATE, AudioChunk, Gap, Snippet, VideoFrame

_SNAP_SAMPLES = 160  # 10 ms: audio this close to where the last chunk ended is contiguous
_TAIL_SECONDS = 0.1  # a last window with less audio than this and no frames is encoder padding


class Snippeter:
    """Turns VideoFrame/AudioChunk/Gap items into Snippets of `seconds` on the stream clock.

    Snippet k covers [k*seconds, (k+1)*seconds): the sampled frames in it and exactly
    round(seconds*16000) audio samples, cut sample-exactly and zero-filled where audio is
    missing. A snippet is emitted once every present modality has passed its end, or once
    one modality is `max_skew` seconds ahead of the other (a stalled stream never holds
    memory). Windows wholly inside a Gap and without media are skipped, not emitted.
    `wall_anchor` may be set after construction (live sources learn it at the first item).
    """

    def __init__(
        self,
        stream: str,
        seconds: float = 2.0,
        has_audio: bool = True,
        has_video: bool = True,
        wall_anchor: float | None = None,
        *,
        max_skew: float = 10.0,
    ) -> None:
        if not has_audio and not has_video:
            raise ConfigError("A snippeter needs a source with audio or video.")
        samples = int(round(seconds * AUDIO_RATE))
        if samples < 1:
            raise ConfigError(f"A snippet must last at least one audio sample, not {seconds} s.")
        self.stream = stream
        self.samples = samples
        self.seconds = samples / AUDIO_RATE  # whole samples, so windows tile audio exactly
        self.has_audio = has_audio
        self.has_video = has_video
        self.wall_anchor = wall_anchor
        self.max_skew = max_skew
        self.emitted = 0
        self.skipped = 0  # windows skipped inside gaps
        self.late = 0  # items that came after their window was emitted (dropped)
        self._k: int | None = None  # next window to emit
        self._frames: deque[VideoFrame] = deque()
        self._segments: deque[tuple[int, np.ndarray]] = deque()  # (first sample, samples)
        self._audio_pos: int | None = None  # sample index where audio continues
        self._video_pos = -math.inf  # time up to which video is known
        self._gaps: list[Gap] = []

    # ---- input --------------------------------------------------------------------------

    def push(self, item: VideoFrame | AudioChunk | Gap) -> list[Snippet]:
        """Take one item; return the snippets it completed (oldest first)."""
        if isinstance(item, VideoFrame):
            self._push_frame(item)
        elif isinstance(item, AudioChunk):
            self._push_audio(item)
        elif isinstance(item, Gap):
            self._push_gap(item)
        else:
            raise TypeError(f"Snippeter cannot take {type(item).__name__}")
        return self._drain()

    def flush(self) -> list[Snippet]:
        """At end of stream: emit every window that still holds media."""
        out: list[Snippet] = []
        while self._k is not None:
            self._skip_gaps()
            first = self._first_content()
            if first is None:
                break
            if self._is_tail(self._bounds(self._k)[1]):
                break
            out.append(self._emit())
        self._frames.clear()
        self._segments.clear()
        return out

    def _window(self, t: float) -> int:
        return math.floor(t / self.seconds + 1e-9)

    def _bounds(self, k: int) -> tuple[float, float]:
        return k * self.samples / AUDIO_RATE, (k + 1) * self.samples / AUDIO_RATE

    def _start_at(self, t: float) -> None:
        if self._k is None:
            self._k = max(0, self._window(t))

    def _push_frame(self, frame: VideoFrame) -> None:
        self._start_at(frame.t)
        assert self._k is not None
        self._video_pos = max(self._video_pos, frame.t)
        if frame.t < self._bounds(self._k)[0]:
            self.late += 1
            return
        self._frames.append(frame)

    def _push_audio(self, chunk: AudioChunk) -> None:
        samples = np.asarray(chunk.samples, dtype=np.float32).reshape(-1)
        if not len(samples):
            return
        self._start_at(chunk.t)
        assert self._k is not None
        first = int(round(chunk.t * AUDIO_RATE))
        if self._audio_pos is not None:
            if abs(first - self._audio_pos) <= _SNAP_SAMPLES:
                first = self._audio_pos
            elif first < self._audio_pos:  # overlaps what we have: keep the new part
                samples = samples[self._audio_pos - first :]
                first = self._audio_pos
        floor = self._k * self.samples
        if first < floor:  # its window is already out
            self.late += 1
            samples = samples[floor - first :]
            first = floor
        end = first + len(samples)
        self._audio_pos = max(self._audio_pos or 0, end)
        if len(samples):
            self._segments.append((first, samples))

    def _push_gap(self, gap: Gap) -> None:
        if gap.end <= gap.start:
            return
        self._gaps.append(gap)
        self._video_pos = max(self._video_pos, gap.end)
        end_sample = int(round(gap.end * AUDIO_RATE))
        self._audio_pos = max(self._audio_pos or 0, end_sample)

    # ---- output -------------------------------------------------------------------------

    def _progress(self) -> list[float]:
        out = []
        if self.has_audio:
            out.append(self._audio_pos / AUDIO_RATE if self._audio_pos is not None else -math.inf)
        if self.has_video:
            out.append(self._video_pos)
        return out

    def _drain(self) -> list[Snippet]:
        out: list[Snippet] = []
        while self._k is not None:
            self._skip_gaps()
            _, end = self._bounds(self._k)
            progress = self._progress()
            done = min(progress) >= end or (
                max(progress) >= end + self.max_skew and self._first_content() is not None
            )
            if not done:
                break
            out.append(self._emit())
        return out

    def _first_content(self) -> float | None:
        """Time of the earliest media still held, if any."""
        times = []
        if self._frames:
            times.append(self._frames[0].t)
        if self._segments:
            times.append(self._segments[0][0] / AUDIO_RATE)
        return min(times) if times else None

    def _skip_gaps(self) -> None:
        """Jump over windows that lie wholly inside a gap and hold no media."""
        assert self._k is not None
        while True:
            start, end = self._bounds(self._k)
            self._gaps = [g for g in self._gaps if g.end > start]
            covering = [g for g in self._gaps if g.start <= start and g.end >= end]
            if not covering:
                return
            target = self._window(max(g.end for g in covering))
            first = self._first_content()
            if first is not None:
                target = min(target, self._window(first))
            if target <= self._k:
                return
            self.skipped += target - self._k
            self._k = target

    def _is_tail(self, end: float) -> bool:
        """Is the current window the last and nearly empty (encoder padding)?"""
        if self._frames:
            return False
        end_sample = int(round(end * AUDIO_RATE))
        if any(first + len(s) > end_sample for first, s in self._segments):
            return False
        held = sum(len(s) for _, s in self._segments)
        return held < _TAIL_SECONDS * AUDIO_RATE

    def _emit(self) -> Snippet:
        assert self._k is not None
        k = self._k
        start, end = self._bounds(k)
        frames: list[VideoFrame] = []
        while self._frames and self._frames[0].t < end:
            frames.append(self._frames.popleft())
        audio = np.zeros(self.samples, dtype=np.float32)
        s0, s1 = k * self.samples, (k + 1) * self.samples
        real = 0
        while self._segments:
            first, samples = self._segments[0]
            if first >= s1:
                break
            a, b = max(first, s0), min(first + len(samples), s1)
            if b > a:
                audio[a - s0 : b - s0] = samples[a - first : b - first]
                real += b - a
            if first + len(samples) <= s1:
                self._segments.popleft()
            else:
                self._segments[0] = (s1, samples[s1 - first :])
                break
        missing = set()
        if not self.has_audio or real == 0:
            missing.add("audio")
        if not self.has_video or not frames:
            missing.add("video")
        gap = any(g.start < end and g.end > start for g in self._gaps)
        wall = self.wall_anchor + start if self.wall_anchor is not None else None
        self._k = k + 1
        self.emitted += 1
        return Snippet(
            stream=self.stream,
            index=k,
            start=start,
            end=end,
            wall=wall,
            frames=frames,
            audio=audio,
            missing=missing,
            gap=gap,
        )
