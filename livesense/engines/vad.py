"""Streaming voice activity with the silero VAD ONNX model, behind the engine interface.

The model takes a batch axis (input (B, 576), state (2, B, 128)), so the windows of many
streams can run as one batch: give every stream's SileroVad the shared batcher of
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
        count = data.size // WINDOW
        out = np.empty(count, dtype=np.float32)
        state, context = self._state, self._context
        for k in range(count):
            x = np.concatenate([context, data[None, k * WINDOW : (k + 1) * WINDOW]], axis=1)
            if self.batcher is not None:
                prob, state = self.batcher([(x, state)], id(self))[0]
            else:
                prob, state = self.engine.run({"input": x, "state": state, "sr": self._sr})
            context = x[:, -CONTEXT:]
            out[k] = float(prob.reshape(-1)[0])
        # Commit only after every window ran, so a failing call leaves the state as it was.
        self._state, self._context = state, context
        self._pending = data[count * WINDOW :].copy()
        self.windows += count
        return out


def vad_runner(engine: Engine) -> Any:
    """A batch function for the VAD: windows (1, 576) and states (2, 1, 128) of many streams."""
    sr = np.array(AUDIO_RATE, dtype=np.int64)

    def run(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
        if len(items) == 1:
            prob, state_n = engine.run({"input": items[0][0], "state": items[0][1], "sr": sr})
            return [(prob, state_n)]
        x = np.concatenate([i[0] for i in items], axis=0)
        state = np.concatenate([i[1] for i in items], axis=1)
        prob, state_n = engine.run({"input": x, "state": state, "sr": sr})
        return [(prob[k : k + 1], state_n[:, k : k + 1]) for k in range(len(items))]

    return run


def vad_batcher(factory: EngineFactory | None = None, threads: int = 1) -> Batcher[Any, Any] | None:
    """The process's shared VAD batcher (None when batching is off)."""
    factory = factory or shared_factory()
    engine = factory.engine(vad_spec(), threads=threads)
    return factory.batcher(VAD, vad_runner(engine))
