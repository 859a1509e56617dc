"""Streaming voice activity with the silero VAD ONNX model, run directly on onnxruntime."""

from __future__ import annotations

import numpy as np

from livesense.engines.models import silero_vad_onnx
from livesense.engines.onnx import OnnxEngine
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

    def __init__(self, threads: int = 1, engine: OnnxEngine | None = None) -> None:
        self.engine = engine or OnnxEngine(silero_vad_onnx(), name="vad-silero", threads=threads)
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
            prob, state = self.engine.run({"input": x, "state": state, "sr": self._sr})
            context = x[:, -CONTEXT:]
            out[k] = float(prob.reshape(-1)[0])
        # Commit only after every window ran, so a failing call leaves the state as it was.
        self._state, self._context = state, context
        self._pending = data[count * WINDOW :].copy()
        self.windows += count
        return out
