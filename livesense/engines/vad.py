"""Streaming voice activity with the silero VAD ONNX model, behind the engine interface.

The model is recurrent: window k needs the state left by window k-1, so a stream's windows
run one model call each, in order. What can be shared is the call: the model takes a batch
axis (input (B, 576), state (2, B, 128)), so `vad_runner` steps the whole snippets of many
streams together, window k of every stream in one call. A stream hands its snippet over in
one request (its windows and its state), so it crosses to the batcher's thread once per
snippet, not once per 32 ms window: give every stream's SileroVad the shared batcher of
`vad_batcher()` and one model instance serves them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from livesense.engines.batcher import Batcher
from livesense.engines.engine import Engine
from livesense.engines.engine_factory import EngineFactory, shared_factory
from livesense.engines.model_spec import VAD, vad_spec
from livesense.records import AUDIO_RATE

WINDOW = 512
"""Samples per VAD window at 16 kHz (32 ms): the only window size the model accepts there."""
CONTEXT = 64
"""Samples of the previous window that the model expects before each new window."""
WINDOW_SECONDS = WINDOW / AUDIO_RATE


class SileroVad:
    """Speech probability per 32 ms window of a 16 kHz stream; state is kept across calls.

    Samples that do not fill a whole window are kept and used by the next call, so window k
    always covers samples [k*512, (k+1)*512) counted from the last reset(). One instance
    follows one stream: it is not shareable between streams.
    """

    def __init__(
        self,
        threads: int = 1,
        engine: Engine | None = None,
        *,
        batcher: Batcher[Any, Any] | None = None,
        factory: EngineFactory | None = None,
    ) -> None:
        if engine is None:
            engine = (factory or shared_factory()).engine(vad_spec(), threads=threads)
        self.engine = engine
        self.batcher = batcher
        self._sr = np.array(AUDIO_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state, the context and any partial window (a new stream)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.windows = 0  # whole windows processed since the last reset

    @property
    def pending(self) -> int:
        """Samples received but not yet part of a whole window."""
        return int(self._pending.size)

    def probs(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities (float32) of every window completed by these samples."""
        data = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._pending.size:
            data = np.concatenate([self._pending, data])
        windows = frame_windows(self._context, data)
        count = windows.shape[0]
        if count:
            item = (windows, self._state)
            if self.batcher is not None:
                out, state = self.batcher([item], id(self))[0]
            else:
                out, state = run_windows(self.engine, [item], self._sr)[0]
            # Commit only after every window ran, so a failing call leaves the state as it was.
            self._state = state
            self._context = windows[-1:, -CONTEXT:].copy()
        else:
            out = np.empty(0, dtype=np.float32)
        self._pending = data[count * WINDOW :].copy()
        self.windows += count
        return out


def frame_windows(context: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The model's inputs for the whole windows of `data`: (count, CONTEXT + WINDOW), each
    window preceded by the last CONTEXT samples before it (`context` for the first)."""
    count = data.size // WINDOW
    if count == 0:
        return np.empty((0, CONTEXT + WINDOW), dtype=np.float32)
    joined = np.concatenate([context.reshape(-1), data[: count * WINDOW]])
    starts = np.arange(count) * WINDOW
    return joined[starts[:, None] + np.arange(CONTEXT + WINDOW)[None, :]]


def run_windows(
    engine: Engine, items: Sequence[tuple[np.ndarray, np.ndarray]], sr: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run streams' windows (count_i, 576) from their states (2, 1, 128), window k of every
    stream in one call; each stream's probabilities (count_i,) and its state after its last
    window. Streams with fewer windows leave the batch when theirs are done."""
    if sr is None:
        sr = np.array(AUDIO_RATE, dtype=np.int64)
    order = sorted(range(len(items)), key=lambda i: -items[i][0].shape[0])
    counts = [items[i][0].shape[0] for i in order]
    longest = counts[0] if counts else 0
    x = np.zeros((longest, len(order), CONTEXT + WINDOW), dtype=np.float32)  # step-major
    for row, i in enumerate(order):
        x[: counts[row], row] = items[i][0]
    state = np.concatenate([items[i][1] for i in order], axis=1).astype(np.float32)
    probs = np.zeros((len(order), longest), dtype=np.float32)
    live = len(order)
    for k in range(longest):
        while live and counts[live - 1] <= k:  # sorted longest first: the done ones are last
            live -= 1
        feeds = {"input": x[k, :live], "state": np.ascontiguousarray(state[:, :live]), "sr": sr}
        prob, state_n = engine.run(feeds)
        probs[:live, k] = np.asarray(prob).reshape(live, -1)[:, 0]
        state[:, :live] = state_n
    out: list[tuple[np.ndarray, np.ndarray]] = []
    rows = {i: row for row, i in enumerate(order)}
    for i in range(len(items)):
        row = rows[i]
        out.append((probs[row, : counts[row]].copy(), state[:, row : row + 1].copy()))
    return out


def vad_runner(engine: Engine) -> Any:
    """A batch function for the VAD: whole snippets of many streams, as (windows (count, 576),
    state (2, 1, 128)) each; gives (probabilities (count,), state after the last window)."""
    sr = np.array(AUDIO_RATE, dtype=np.int64)

    def run(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        return run_windows(engine, items, sr)

    return run


def vad_batcher(factory: EngineFactory | None = None, threads: int = 1) -> Batcher[Any, Any] | None:
    """The process's shared VAD batcher (None when batching is off)."""
    factory = factory or shared_factory()
    engine = factory.engine(vad_spec(), threads=threads)
    return factory.batcher(VAD, vad_runner(engine))
