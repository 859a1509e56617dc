"""The audio perception stage: voice activity, events, loudness, onsets and words per snippet.

Speech is transcribed by whole utterances, not by fixed snippet cuts (which split words):
the stage keeps a rolling buffer, follows speech regions with the VAD (a little padding, a
short hangover), transcribes a region when it closes and puts each word in the snippet that
holds the word's midpoint. A snippet leaves the stage only when every speech region that
overlaps it is transcribed, so `push` may return nothing for a while, then several snippets,
always in order. Live sources cut an utterance at `asr_max_utterance` seconds (at the
quietest point near the limit) so words are held back only a few seconds; files cut at
FILE_MAX_REGION.

Shedding load: `push(..., shed=n)`; n >= 1 skips the event tagger for that snippet, n >= 2
also skips transcription of the speech regions that close during that push. Shed or failed
stages are named in `features.skipped` ("events", "vad", "asr"); the snippet always goes on.
The stage is blocking (models run here): call it from a worker thread, one per stream.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from livesense.config import PerceptionSettings
from livesense.engines.events import AudioEventTagger
from livesense.engines.vad import WINDOW, SileroVad
from livesense.engines.whisper import Transcriber
from livesense.records import AUDIO_RATE, Features, Snippet, Word

log = logging.getLogger(__name__)

PAD = 0.2
"""Seconds of audio kept before and after the speech the VAD found."""
HANGOVER = 0.5
"""Seconds of non-speech that close a speech region (live sources)."""
FILE_HANGOVER = 3.0
"""Files: pauses up to this long stay inside one region. Whisper encodes 30 s windows
whatever the region's length, so one call over two sentences costs ~35% less than two."""
MIN_SPEECH = 0.2
"""Regions with less speech than this (s) are not transcribed (clicks, breaths)."""
HYSTERESIS = 0.15
"""Once in speech, a window counts as speech down to threshold - HYSTERESIS."""
FILE_MAX_REGION = 28.0
"""Longest region (s) on files: Whisper reads 30 s at a time."""
CUT_SEARCH = 2.0
"""How far back (s) from the limit a long utterance looks for its quietest point."""
CONTINUITY = 0.02
"""Snippets further apart than this (s) are treated as a break in the audio."""
ONSET_RISE_DB = 9.0
ONSET_FLOOR_DB = -50.0
ONSET_HOP = 256
ONSET_LOOKBACK = 4
ONSET_REFRACTORY = 6


@dataclass(slots=True)
class _Region:
    """An open speech region, in samples on the stream clock."""

    start: int
    last_speech: int  # end of the last window that counted as speech
    speech: int  # samples of confident speech inside


@dataclass(slots=True)
class _Pending:
    snippet: Snippet
    features: Features
    start: int = 0  # samples on the stream clock
    end: int = 0
    has_audio: bool = True


class AudioPerception:
    """Fills the audio fields of Features for one stream's snippets, in order."""

    def __init__(
        self,
        settings: PerceptionSettings,
        *,
        live: bool,
        transcriber: Transcriber | None = None,
        vad: SileroVad | None = None,
        tagger: AudioEventTagger | None = None,
    ) -> None:
        self.settings = settings
        self.live = live
        if settings.asr and transcriber is None:
            transcriber = Transcriber(settings.asr_model, threads=settings.asr_threads)
        if settings.events and tagger is None:
            tagger = AudioEventTagger()
        self.transcriber: Transcriber | None = transcriber if settings.asr else None
        self.tagger: AudioEventTagger | None = tagger if settings.events else None
        self.vad: SileroVad = vad or SileroVad()
        self.stage_seconds: dict[str, float] = {"vad": 0.0, "events": 0.0, "asr": 0.0, "level": 0.0}
        self.max_region = settings.asr_max_utterance if live else FILE_MAX_REGION
        self.hangover = HANGOVER if live else FILE_HANGOVER
        self._pending: deque[_Pending] = deque()
        self._open: _Region | None = None
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0
        self._continuous = False  # the next snippet may continue the buffer
        self._vad_origin = 0  # stream sample where VAD window 0 starts
        self._released_until = 0  # end of the last snippet handed on
        self._last_region_end = 0
        self._energy_tail: list[float] = []
        self._shed = 0

    # -- public API -------------------------------------------------------------------------

    def push(
        self, snippet: Snippet, features: Features, shed: int = 0
    ) -> list[tuple[Snippet, Features]]:
        """Take the next snippet; return the snippets that are complete now, in order."""
        self._shed = int(shed)
        audio = snippet.audio
        if "audio" in snippet.missing or audio is None or audio.size == 0:
            self._break()
            self._pending.append(_Pending(snippet, features, has_audio=False))
            return self._release()
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        s0 = round(snippet.start * AUDIO_RATE)
        if snippet.gap or not self._continuous or abs(s0 - self._buf_end) > CONTINUITY * AUDIO_RATE:
            self._break()
            self._buf_start = self._vad_origin = s0
            self._continuous = True
        else:
            s0 = self._buf_end  # snap: rounding must not open holes in the buffer
        self._pending.append(_Pending(snippet, features, s0, s0 + samples.size))
        self._buf = np.concatenate([self._buf, samples])

        t0 = time.perf_counter()
        features.loudness_db = loudness_db(samples)
        features.onsets = self._count_onsets(samples)
        self._tick("level", t0)
        self._tag_events(samples, features)
        self._detect_speech(samples, s0, features)
        self._trim()
        return self._release()

    def flush(self) -> list[tuple[Snippet, Features]]:
        """End of stream: transcribe what is open and hand on every snippet still held."""
        self._shed = 0
        self._break()
        out = self._release()
        self._released_until = self._last_region_end = 0
        return out

    @property
    def held(self) -> int:
        """Snippets waiting for a speech region to close."""
        return len(self._pending)

    # -- stages -----------------------------------------------------------------------------

    def _tag_events(self, samples: np.ndarray, features: Features) -> None:
        if self.tagger is None:
            return
        if self._shed >= 1:
            features.skipped.append("events")
            return
        t0 = time.perf_counter()
        try:
            features.events = self.tagger.tag(samples)
        except Exception as e:
            log.warning("audio events failed: %s", e)
            features.skipped.append("events")
        self._tick("events", t0)

    def _detect_speech(self, samples: np.ndarray, s0: int, features: Features) -> None:
        t0 = time.perf_counter()
        first = self.vad.windows
        try:
            probs = self.vad.probs(samples)
        except Exception as e:
            log.warning("voice activity failed: %s", e)
            features.skipped.append("vad")
            # Count this snippet as silence and start the VAD afresh after it.
            if self._open is not None:
                self._close(s0)
            self.vad.reset()
            self._vad_origin = self._buf_end
            self._tick("vad", t0)
            return
        self._tick("vad", t0)
        threshold = self.settings.vad_threshold
        features.speech_ratio = float(np.mean(probs >= threshold)) if probs.size else 0.0
        if self.transcriber is None:
            return
        for k, p in enumerate(probs.tolist()):
            a = self._vad_origin + (first + k) * WINDOW
            self._follow(a, a + WINDOW, p, threshold)

    def _follow(self, a: int, b: int, p: float, threshold: float) -> None:
        """Advance the speech-region state by one VAD window [a, b)."""
        pad = int(PAD * AUDIO_RATE)
        region = self._open
        if region is None:
            if p >= threshold:
                start = max(a - pad, self._released_until, self._buf_start, self._last_region_end)
                self._open = _Region(start=start, last_speech=b, speech=WINDOW)
            return
        if p >= threshold - HYSTERESIS:
            region.last_speech = b
            if p >= threshold:
                region.speech += WINDOW
        elif b - region.last_speech >= self.hangover * AUDIO_RATE:
            self._close(min(region.last_speech + pad, b))
            return
        if b - region.start >= self.max_region * AUDIO_RATE:
            cut = self._quietest(region.start, b)
            tail_speech = region.last_speech > cut
            self._close(cut)
            self._open = _Region(
                start=cut,
                last_speech=max(region.last_speech, cut),
                speech=(b - cut) if tail_speech else 0,
            )

    def _quietest(self, start: int, end: int) -> int:
        """The middle of the quietest 100 ms in the last CUT_SEARCH seconds of [start, end).

        100 ms is longer than a stop consonant's silence, so the cut lands between words.
        """
        span = end - start
        lo = start + max(span - int(CUT_SEARCH * AUDIO_RATE), span // 2)
        frame, hop = AUDIO_RATE // 10, AUDIO_RATE // 100
        seg = self._buf[lo - self._buf_start : end - self._buf_start].astype(np.float64)
        if seg.size < frame + hop:
            return end
        power = np.concatenate([[0.0], np.cumsum(np.square(seg))])
        starts = np.arange(0, seg.size - frame + 1, hop)
        energy = power[starts + frame] - power[starts]
        return lo + int(starts[int(np.argmin(energy))]) + frame // 2

    def _close(self, end: int) -> None:
        """Close the open region at `end` and transcribe it."""
        region, self._open = self._open, None
        if region is None:
            return
        end = min(end, self._buf_end)
        self._last_region_end = max(self._last_region_end, end)
        if end <= region.start or region.speech < MIN_SPEECH * AUDIO_RATE:
            return
        if self.transcriber is None:
            return
        if self._shed >= 2:
            self._mark(region.start, end, "asr")
            return
        t0 = time.perf_counter()
        audio = self._buf[region.start - self._buf_start : end - self._buf_start]
        try:
            words = self.transcriber.transcribe(audio, region.start / AUDIO_RATE)
        except Exception as e:
            log.warning("speech to text failed: %s", e)
            self._mark(region.start, end, "asr")
            words = []
        self._tick("asr", t0)
        for word in words:
            self._place(word)

    def _place(self, word: Word) -> None:
        """Put a word in the held snippet that contains its midpoint (else the nearest)."""
        mid = (word.start + word.end) / 2 * AUDIO_RATE
        best: _Pending | None = None
        best_d = float("inf")
        for p in self._pending:
            if not p.has_audio:
                continue
            d = 0.0 if p.start <= mid < p.end else min(abs(mid - p.start), abs(mid - p.end))
            if d < best_d:
                best, best_d = p, d
        if best is not None:
            best.features.words.append(word)

    def _mark(self, start: int, end: int, stage: str) -> None:
        for p in self._pending:
            if p.has_audio and p.start < end and start < p.end and stage not in p.features.skipped:
                p.features.skipped.append(stage)

    # -- buffer and hand-off ----------------------------------------------------------------

    @property
    def _buf_end(self) -> int:
        return self._buf_start + int(self._buf.size)

    def _break(self) -> None:
        """The audio stops here (gap, missing audio, end): close what is open, start afresh."""
        if self._open is not None:
            self._close(self._buf_end)
        self._continuous = False
        self._buf = np.zeros(0, dtype=np.float32)
        self._energy_tail = []
        self.vad.reset()

    def _trim(self) -> None:
        keep = self._open.start if self._open else self._buf_end - int(PAD * AUDIO_RATE)
        drop = min(max(keep - self._buf_start, 0), self._buf.size)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def _release(self) -> list[tuple[Snippet, Features]]:
        out: list[tuple[Snippet, Features]] = []
        while self._pending:
            p = self._pending[0]
            if p.has_audio and self._open is not None and self._open.start < p.end:
                break
            self._pending.popleft()
            if p.has_audio:
                self._released_until = max(self._released_until, p.end)
            out.append((p.snippet, p.features))
        return out

    # -- levels -----------------------------------------------------------------------------

    def _count_onsets(self, samples: np.ndarray) -> int:
        """Sudden rises of short-time energy (>= 9 dB over the last ~64 ms, above -50 dBFS)."""
        n = samples.size // ONSET_HOP
        if n == 0:
            return 0
        frames = samples[: n * ONSET_HOP].reshape(n, ONSET_HOP)
        db = 10.0 * np.log10(np.square(frames).mean(axis=1) + 1e-12)
        series = np.concatenate([np.array(self._energy_tail, dtype=np.float64), db])
        offset = len(self._energy_tail)
        count, last = 0, -ONSET_REFRACTORY
        for i in range(offset, series.size):
            if i < 1 or series[i] < ONSET_FLOOR_DB or i - last < ONSET_REFRACTORY:
                continue
            if series[i] - series[max(0, i - ONSET_LOOKBACK) : i].min() >= ONSET_RISE_DB:
                count, last = count + 1, i
        self._energy_tail = series[-ONSET_LOOKBACK:].tolist()
        return count

    def _tick(self, stage: str, t0: float) -> None:
        self.stage_seconds[stage] += time.perf_counter() - t0


def loudness_db(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale sine reads -3 dB), floored at -120."""
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-120.0, 20.0 * np.log10(rms + 1e-12))
