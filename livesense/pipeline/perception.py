"""The perception models, loaded once per process and shared by every stream.

Neural models run behind livesense/engines (best backend per model, TensorRT where there is
one); every stream's stages share one engine per model and, with `engines.batch` on, one
cross-stream batcher per model (VAD windows, OCR lines, text, CLIP), so the requests of all
streams fill batches together. Whisper runs on CTranslate2, on the device the same
`device` setting chooses.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from livesense.config import EngineSettings, PerceptionSettings, Settings
from livesense.engines.engine_factory import EngineFactory, configure_engines, shared_factory
from livesense.engines.text import TextEmbedder, shared_text_embedder
from livesense.errors import ModelMissingError
from livesense.pipeline.audio import AudioPerception
from livesense.pipeline.combiner import EvidenceCombiner
from livesense.pipeline.vision import VisionPerception

log = logging.getLogger(__name__)


class Perception:
    """Loads each default model on first use and hands out per-stream stages."""

    def __init__(
        self,
        settings: PerceptionSettings,
        engines: EngineSettings | None = None,
        device: str = "auto",
    ) -> None:
        self.settings = settings
        self.engine_settings = engines
        self.device = device
        self._factory: EngineFactory | None = None
        self._vad_engine: Any = None
        self._vad_batcher: Any = None
        self._lock = threading.Lock()
        self._transcriber: object | None = None
        self._ocr: object | None = None
        self._faces: object | None = None
        self._tagger: object | None = None
        self._clip: object | None = None
        self._detector: object | None = None
        self._scenes: object | None = None
        self.missing: dict[str, str] = {}  # vision stage -> why its model file is not there
        self._combiner: EvidenceCombiner | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Perception:
        """Perception with the process's perception, engine and device settings."""
        return cls(settings.perception, settings.engines, settings.device)

    @property
    def factory(self) -> EngineFactory:
        """The process's engine factory, configured from the engine settings given (if any)."""
        if self._factory is None:
            if self.engine_settings is not None:
                self._factory = configure_engines(self.engine_settings, self.device)
            else:
                self._factory = shared_factory()
        return self._factory

    @property
    def embedder(self) -> TextEmbedder:
        self.factory  # noqa: B018  (configures the shared factory before the embedder loads)
        return shared_text_embedder()

    def load(self) -> None:
        """Load every enabled model now, so a missing package fails before any media flows."""
        s = self.settings
        with self._lock:
            factory = self.factory
            if s.asr and self._transcriber is None:
                from livesense.engines.whisper import Transcriber

                self._transcriber = Transcriber(
                    s.asr_model, device=self.device, threads=s.asr_threads
                )
            if s.events and self._tagger is None:
                from livesense.engines.events import AudioEventTagger

                self._tagger = AudioEventTagger()
            if s.ocr and self._ocr is None:
                from livesense.engines.ocr import OcrReader

                self._ocr = OcrReader(max_side=s.ocr_max_side, factory=factory)
            if s.faces and self._faces is None:
                from livesense.engines.faces import FaceDetector

                self._faces = FaceDetector()
            if s.objects and self._detector is None and "objects" not in self.missing:
                from livesense.engines.detector import ObjectDetector

                self._detector = self._optional(
                    "objects",
                    lambda: ObjectDetector(min_score=s.object_min_score, factory=factory),
                )
            if s.scenes and self._scenes is None and "scene" not in self.missing:
                from livesense.engines.scene import SceneClassifier

                self._scenes = self._optional(
                    "scene", lambda: SceneClassifier(top=s.scene_top, factory=factory)
                )
            if self._clip is None and (pair := self._clip_towers()) is not None:
                from livesense.engines.clip import ClipEncoder

                self._clip = ClipEncoder(*pair, factory=factory)
            if self._vad_engine is None:
                from livesense.engines.model_spec import vad_spec
                from livesense.engines.vad import vad_batcher

                self._vad_engine = factory.engine(vad_spec(), threads=1)
                self._vad_batcher = vad_batcher(factory)
            if self._combiner is None:
                self._combiner = EvidenceCombiner(self.embedder)

    def _optional(self, stage: str, make: Any) -> object | None:
        """A vision model whose file may be missing: without it the stage is skipped (and
        named in each snippet's `skipped`), and the one sentence saying how to get it is
        logged once; every other stage runs on."""
        try:
            return make()  # type: ignore[no-any-return]
        except ModelMissingError as e:
            self.missing[stage] = str(e)
            log.warning("%s", e)
            return None

    def _clip_towers(self) -> tuple[Path, Path] | None:
        """The settings' CLIP towers, else those `livesense engines export` registered."""
        s = self.settings
        if s.clip_image and s.clip_text:
            return Path(s.clip_image), Path(s.clip_text)
        if s.clip_image or s.clip_text:
            return None  # the vision stage says that both are needed
        from livesense.engines.model_registry import ModelRegistry

        return ModelRegistry(self.factory.settings.cache_dir).clip()

    @property
    def combiner(self) -> EvidenceCombiner:
        self.load()
        assert self._combiner is not None
        return self._combiner

    def audio_stage(self, live: bool) -> AudioPerception:
        from livesense.engines.vad import SileroVad

        self.load()
        return AudioPerception(
            self.settings,
            live=live,
            transcriber=self._transcriber,  # type: ignore[arg-type]
            tagger=self._tagger,  # type: ignore[arg-type]
            vad=SileroVad(engine=self._vad_engine, batcher=self._vad_batcher),
        )

    def engines(self) -> list[dict[str, Any]]:
        """What each loaded model runs on (backend, providers, precision, cache), and timing."""
        self.load()
        out = [e.describe() for e in self.factory.engines()]
        for name, b in self.factory.batchers().items():
            out.append({"batcher": name, **b.stats.as_json()})
        return out

    def vision_stage(self, stream: str | None = None) -> VisionPerception:
        self.load()
        return VisionPerception(
            self.settings,
            ocr=self._ocr,  # type: ignore[arg-type]
            faces=self._faces,  # type: ignore[arg-type]
            clip=self._clip,  # type: ignore[arg-type]
            detector=self._detector,  # type: ignore[arg-type]
            scenes=self._scenes,  # type: ignore[arg-type]
            missing=self.missing,
            stream=stream,
        )
