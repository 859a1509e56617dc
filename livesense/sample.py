"""Makes a short sample clip with speech and on-screen text (for the demo and the benchmark)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from livesense.errors import LivesenseError


@dataclass(frozen=True)
class Scene:
    seconds: float
    caption: list[str]  # lines drawn on screen
    speech: str  # what a voice says during the scene
    background: tuple[int, int, int] = (20, 40, 90)


DEMO_SCENES = [
    Scene(
        7.0,
        ["PLATFORM 9", "ROME 07:30"],
        "The train to Rome leaves from platform nine at seven thirty.",
    ),
    Scene(
        7.0,
        ["CAFE", "OPEN UNTIL 22:00"],
        "The cafe on the upper level is open until ten tonight.",
        (90, 30, 30),
    ),
]


def speak(text: str, rate: int = 16_000) -> np.ndarray:
    """Speech for `text` from espeak-ng, as float32 mono at `rate`."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise LivesenseError("Making the sample clip needs espeak-ng (apt-get install espeak-ng).")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            src_rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    n = int(round(len(pcm) * rate / src_rate))
    return np.interp(np.linspace(0, len(pcm) - 1, n), np.arange(len(pcm)), pcm).astype(np.float32)


def render_card(
    lines: list[str], size: tuple[int, int], bg: tuple[int, int, int], t: float
) -> np.ndarray:
    """A title card with big clear text and a small moving marker (so frames differ)."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bg
    scale = h / 300
    for i, line in enumerate(lines):
        (tw, th), _ = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.6 * scale, int(4 * scale))
        y = int(h * (0.35 + 0.3 * i)) + th // 2
        cv2.putText(
            img,
            line,
            ((w - tw) // 2, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.6 * scale,
            (255, 255, 255),
            int(4 * scale),
            cv2.LINE_AA,
        )
    x = int((t * 40) % max(1, w - 20))
    img[h - 14 : h - 6, x : x + 12] = (250, 200, 0)
    return img


def make_sample(
    path: Path,
    scenes: list[Scene] = DEMO_SCENES,
    *,
    size: tuple[int, int] = (640, 360),
    fps: int = 25,
) -> float:
    """Write an H.264 + AAC clip of the scenes; returns its duration in seconds."""
    rate = 48_000
    total = sum(s.seconds for s in scenes)
    audio = np.zeros(int(total * rate), np.float32)
    t0 = 0.0
    for scene in scenes:
        voice = speak(scene.speech, rate)[: int((scene.seconds - 0.8) * rate)]
        at = int((t0 + 0.5) * rate)
        audio[at : at + len(voice)] += voice * 0.9
        t0 += scene.seconds
    bounds = np.cumsum([s.seconds for s in scenes])

    def frame(t: float) -> np.ndarray:
        scene = scenes[int(np.searchsorted(bounds, t, side="right"))]
        return render_card(scene.caption, size, scene.background, t)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, (frame(i / fps) for i in range(int(total * fps))), audio, size=size, fps=fps)
    return total


def write_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray,
    *,
    size: tuple[int, int],
    fps: int,
    rate: int = 48_000,
    crf: int = 23,
) -> None:
    """Encode RGB frames (each `size`, at `fps`) and mono float audio (at `rate`) into an
    H.264 + AAC file."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast", "crf": str(crf)}
        aus = out.add_stream("aac", rate=rate)
        aus.layout = "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, "rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        step = 1024
        for i in range(0, len(audio), step):
            chunk = np.ascontiguousarray(audio[i : i + step], np.float32)
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            af.sample_rate = rate
            af.pts = i
            af.time_base = Fraction(1, rate)
            out.mux(aus.encode(af))
        out.mux(aus.encode())
