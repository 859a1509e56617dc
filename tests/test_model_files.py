"""The vision models kept in the repository are the files their provenance names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import livesense

MODELS = Path(livesense.__file__).parent / "models"


def test_every_model_file_matches_its_recorded_hash_and_source() -> None:
    provenance = json.loads((MODELS / "PROVENANCE.json").read_text())
    assert {"detect-nanodet-m.onnx", "scene-effnet-lite0.onnx", "imagenet_labels.txt"} <= set(
        provenance
    )
    for name, entry in provenance.items():
        data = (MODELS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["bytes"], name
        assert entry["source"] and entry["license"] and entry["converted_by"], name
    total = sum((MODELS / n).stat().st_size for n in provenance)
    assert total < 30 << 20
