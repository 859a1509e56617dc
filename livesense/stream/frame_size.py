"""The size sampled frames are scaled to, shared by every source backend."""

from __future__ import annotations


def frame_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Downscaled size keeping aspect: longest side <= max_side, both sides even."""
    scale = min(1.0, max_side / max(width, height, 1))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return min(w, max(2, width // 2 * 2)), min(h, max(2, height // 2 * 2))
