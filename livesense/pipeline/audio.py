"""The audio perception stage: voice activity, events, loudness, onsets and words per snippet.

Speech is transcribed by utterances, not by fixed snippet cuts (which split words): the stage
keeps a rolling buffer and follows speech regions with the VAD (a little padding, a short
hangover). Each word goes to the snippet that holds its midpoint.

Files: a region is transcribed whole when it closes (pauses up to FILE_HANGOVER stay inside,
cut at FILE_MAX_REGION). A snippet leaves the stage only when every region overlapping it is
transcribed, so `push` may return nothing for a while, then several snippets, in order.

Live sources (and paced files) are transcribed incrementally and never hold a snippet: `push`
returns the snippet it was given (and any before it) every time, because holding one until the
next arrives would cost a whole snippet of latency. While a region is open (and, for its first
call, holds MIN_CONTEXT seconds of audio: Whisper reads an utterance's first words badly from
less), each push transcribes it from OVERLAP seconds before its last committed word (acoustic
context) to the end of the buffered audio and commits, in order, the new words (midpoint after
the last committed word) that end GUARD seconds before the audio's end (Whisper's last word at
a cut is unreliable). When the VAD has heard no speech in the last QUIET_EDGE seconds, the call
stops at the speech's end and commits every word that starts inside the speech. When the region
closes, the rest is transcribed. A committed word never starts before the one committed
before it ends (where two calls time a boundary a little apart, its start moves to that end).
A committed word whose midpoint lies in a snippet that has already left goes to the earliest
snippet still held (the one being pushed, or at a break the snippet after it), keeping its own
times: in running speech a snippet's last word or two
(those ending in its last GUARD seconds or crossing its end) are found in the next snippet. The
stream's final snippet (`Snippet.last`) closes the region at once, so the words of a live
stream that ends in mid-speech land in it. At most one Whisper call runs per push while speech
is open (its encoder reads `asr_live_window` seconds, not 30, and it decodes greedily once:
audio cut in mid-word looks like a failed decode, and the next call redoes the uncommitted part
anyway); an utterance whose words stop coming (nothing committed for `asr_max_utterance`
seconds) is cut at its quietest point and transcribed whole.

Shedding load: `push(..., shed=n)`; n >= 1 skips the event tagger for that snippet, n >= 2
also skips transcription in that push (live: the speech not yet committed is skipped for
good; files: the regions that close). Shed or failed stages are named in `features.skipped`
("events", "vad", "asr"); the snippet always goes on. `stage_seconds` sums each stage's
time and `asr_calls` counts Whisper calls. The stage is blocking (models run here): call it
from a worker thread, one per stream.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

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
whatever the region's length, so one call over two sentences costs less than two."""
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
GUARD = 0.4
"""Live: words must end this long (s) before the buffered audio's end to be committed."""
QUIET_EDGE = 0.25
"""Live: with no speech in the last this many seconds, every word so far is committed."""
MIN_CONTEXT = 3.0
"""Live: an utterance's first call waits for this much audio (s) while the speech runs on."""
OVERLAP = 1.0
"""Live: audio (s) before the last committed word given to Whisper again as context. The
context is audio, not the committed text as Whisper's prompt: a prompt lets small models
stretch word starts back over pauses and copy repeated phrases into the silence after speech."""
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
    marks: deque[int] = field(default_factory=deque)  # starts of confident-speech windows
    done: int = -1  # live: end of the last committed word (start until one is)

    def __post_init__(self) -> None:
        self.done = max(self.done, self.start)

    def speech_after(self, t: int, end: int | None = None) -> int:
        """Samples of confident speech in [t, end)."""
        return WINDOW * sum(1 for m in self.marks if m >= t and (end is None or m < end))

    def commit(self, end: int) -> None:
        self.done = max(self.done, end)
        while self.marks and self.marks[0] < self.done:
            self.marks.popleft()


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
        self.asr_calls = 0
        self.max_region = settings.asr_max_utterance if live else FILE_MAX_REGION
        window = settings.asr_live_window
        self.window: float | None = window if live and 0 < window < 30 else None
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
        self._calls_before = 0  # asr_calls when the current push began
        self._word_end = 0.0  # end (s) of the last committed word: the next starts after it

    # -- public API -------------------------------------------------------------------------

    def push(
        self, snippet: Snippet, features: Features, shed: int = 0
    ) -> list[tuple[Snippet, Features]]:
        """Take the next snippet; return the snippets that are complete now, in order."""
        self._shed = int(shed)
        self._calls_before = self.asr_calls
        audio = snippet.audio
        if "audio" in snippet.missing or audio is None or audio.size == 0:
            # Held before the break, so that live words of the closing region have a home.
            self._pending.append(_Pending(snippet, features, has_audio=False))
            self._break()
            return self._release()
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        s0 = round(snippet.start * AUDIO_RATE)
        if snippet.gap or not self._continuous or abs(s0 - self._buf_end) > CONTINUITY * AUDIO_RATE:
            pending = _Pending(snippet, features, s0, s0 + samples.size)
            self._pending.append(pending)
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
        if self.live:
            self._advance()
        if snippet.last:  # nothing comes after it: transcribe the rest now, into it
            self._break()
        self._trim()
        return self._release()

    def flush(self) -> list[tuple[Snippet, Features]]:
        """End of stream: transcribe what is open and hand on every snippet still held."""
        self._shed = 0
        self._break()
        out = self._release()
        self._released_until = self._last_region_end = 0
        self._word_end = 0.0
        return out

    @property
    def held(self) -> int:
        """Snippets waiting for a speech region to close (files; live sources hold none)."""
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
                # Files never reach back into a snippet already handed on; live words may
                # (they go to the next snippet held, see the module docstring).
                floor = 0 if self.live else self._released_until
                start = max(a - pad, floor, self._buf_start, self._last_region_end)
                self._open = _Region(start=start, last_speech=b, marks=deque([a]))
            return
        if p >= threshold - HYSTERESIS:
            region.last_speech = b
            if p >= threshold:
                region.marks.append(a)
        elif b - region.last_speech >= self.hangover * AUDIO_RATE:
            self._close(min(region.last_speech + pad, b))
            return
        if b - region.done >= self.max_region * AUDIO_RATE:
            cut = self._quietest(region.done, b)
            self._close(cut)
            self._open = _Region(
                start=cut,
                last_speech=max(region.last_speech, cut),
                marks=deque(m for m in region.marks if m >= cut),
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
        """Close the open region at `end` and transcribe what is not yet committed."""
        region, self._open = self._open, None
        if region is None:
            return
        end = min(end, self._buf_end)
        self._last_region_end = max(self._last_region_end, end)
        if self.transcriber is None or end <= region.done:
            return
        if region.speech_after(region.done, end) < MIN_SPEECH * AUDIO_RATE:
            return
        if self._shed >= 2:
            self._mark(region.done, end, "asr")
            return
        self._transcribe(region, end, math.inf)

    def _advance(self) -> None:
        """Live: transcribe the open region so far and commit the words that are safe."""
        region = self._open
        if region is None or self.transcriber is None or self.asr_calls > self._calls_before:
            return  # nothing open, or this push already ran Whisper (one call a push)
        edge = self._buf_end
        if region.speech_after(region.done) < MIN_SPEECH * AUDIO_RATE:
            return
        if self._shed >= 2:
            self._mark(region.done, edge, "asr")
            region.commit(edge)
            return
        if edge - region.last_speech >= QUIET_EDGE * AUDIO_RATE:
            # The speech stopped: no word is cut at the edge; the silence is not transcribed.
            end = min(edge, region.last_speech + int(PAD * AUDIO_RATE))
            limit: float = end
        elif edge - region.start < MIN_CONTEXT * AUDIO_RATE:
            return  # too little audio yet for Whisper to read the utterance's first words well
        else:
            end, limit = edge, edge - int(GUARD * AUDIO_RATE)
        if limit - region.done < MIN_SPEECH * AUDIO_RATE:
            return  # no word could be committed yet
        self._transcribe(region, end, limit)

    def _transcribe(self, region: _Region, end: int, limit: float) -> None:
        """Transcribe [region.done, end) and commit, in order, the new words ending by `limit`."""
        assert self.transcriber is not None
        start = region.start
        if self.live:
            start = max(region.start, region.done - int(OVERLAP * AUDIO_RATE), self._buf_start)
        t0 = time.perf_counter()
        audio = self._buf[start - self._buf_start : end - self._buf_start]
        self.asr_calls += 1
        try:
            words = self.transcriber.transcribe(
                audio, start / AUDIO_RATE, window=self.window, fallback=not self.live
            )
        except Exception as e:
            log.warning("speech to text failed: %s", e)
            self._mark(region.done, end, "asr")
            region.commit(end)  # what the marked snippets held is not transcribed later
            self._tick("asr", t0)
            return
        self._tick("asr", t0)
        speech_end = region.last_speech + int(PAD * AUDIO_RATE)
        for word in words:
            if (word.start + word.end) / 2 * AUDIO_RATE < region.done:
                continue  # said in the overlap: committed by an earlier call
            if word.end * AUDIO_RATE > limit:
                break
            if word.start * AUDIO_RATE >= min(speech_end, end - AUDIO_RATE // 50):
                break  # after the last speech the VAD heard, or timed past the audio: invented
            if word.start < self._word_end:  # two calls timed a boundary a bit apart
                word = Word(word.text, self._word_end, max(word.end, self._word_end), word.prob)
            self._place(word)
            self._word_end = word.end
            region.commit(round(word.end * AUDIO_RATE))

    def _place(self, word: Word) -> None:
        """Put a word in the held snippet that contains its midpoint, else the nearest one
        with audio (live: the earliest held, when the word's own snippet has left), else
        the nearest held snippet without audio."""
        mid = (word.start + word.end) / 2 * AUDIO_RATE
        best: _Pending | None = None
        best_d = float("inf")
        for p in self._pending:
            if not p.has_audio:
                continue
            d = 0.0 if p.start <= mid < p.end else min(abs(mid - p.start), abs(mid - p.end))
            if d < best_d:
                best, best_d = p, d
        if best is None and self._pending:
            best = self._pending[0]
        if best is not None:
            best.features.words.append(word)
        else:
            log.debug("a word at %.2f s came after its stream's last snippet", word.start)

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
        region = self._open
        if region is None:
            keep = self._buf_end - int(PAD * AUDIO_RATE)
        elif self.live:
            keep = min(region.done, max(region.start, region.done - int(OVERLAP * AUDIO_RATE)))
        else:
            keep = region.start
        drop = min(max(keep - self._buf_start, 0), self._buf.size)
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop

    def _release(self) -> list[tuple[Snippet, Features]]:
        out: list[tuple[Snippet, Features]] = []
        while self._pending:
            p = self._pending[0]
            region = self._open
            if not self.live and p.has_audio and region is not None and region.start < p.end:
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
