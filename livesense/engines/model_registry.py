"""Which models the pipeline runs: the packaged defaults plus towers registered by export.

`livesense engines export` writes the two ONNX towers of a CLIP-family model under
`<engines.cache_dir>/models/<name>/` and records them here (with their parity figures); the
CLIP slot uses the registered pair when `perception.clip_image/clip_text` are not set.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from livesense.config import Settings
from livesense.engines.model_spec import (
    ModelSpec,
    clip_image_spec,
    clip_text_spec,
    detect_spec,
    ocr_det_spec,
    ocr_rec_spec,
    scene_spec,
    text_spec,
    vad_spec,
)
from livesense.errors import ConfigError


class ModelRegistry:
    """A small JSON file of exported models: {"clip": {"name", "image", "text", "parity"}}."""

    def __init__(self, cache_dir: Path) -> None:
        self.folder = Path(cache_dir).expanduser() / "models"
        self.path = self.folder / "registry.json"
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"The model registry {self.path} is unreadable: {e}.") from None
        return data if isinstance(data, dict) else {}

    def register(self, slot: str, entry: dict[str, Any]) -> None:
        with self._lock:
            data = self.read()
            data[slot] = entry
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".registry.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.path)

    def clip(self) -> tuple[Path, Path] | None:
        """The registered CLIP towers (image, text), if both files still exist."""
        entry = self.read().get("clip")
        if not isinstance(entry, dict):
            return None
        image, text = Path(str(entry.get("image", ""))), Path(str(entry.get("text", "")))
        return (image, text) if image.is_file() and text.is_file() else None


def clip_paths(settings: Settings) -> tuple[Path, Path] | None:
    """The CLIP towers to use: the settings' paths, else the registered export, else None."""
    p = settings.perception
    if p.clip_image and p.clip_text:
        return Path(p.clip_image), Path(p.clip_text)
    if p.clip_image or p.clip_text:
        raise ConfigError(
            "The CLIP slot needs both perception.clip_image and perception.clip_text."
        )
    return ModelRegistry(settings.engines.cache_dir).clip()


def pipeline_specs(settings: Settings, names: list[str] | None = None) -> list[ModelSpec]:
    """The ONNX models the pipeline and the query path run, under these settings."""
    p = settings.perception
    specs = [text_spec(), vad_spec()]
    if p.ocr or names:
        specs += [ocr_det_spec(max_side=p.ocr_max_side), ocr_rec_spec()]
    if p.objects or names:
        specs.append(detect_spec())
    if p.scenes or names:
        specs.append(scene_spec())
    clip = clip_paths(settings)
    if clip is not None:
        specs += [clip_image_spec(clip[0]), clip_text_spec(clip[1])]
    if names:
        known = {s.name for s in specs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"Unknown model {', '.join(unknown)}; the models are: {', '.join(sorted(known))}."
            )
        specs = [s for s in specs if s.name in names]
    return specs
