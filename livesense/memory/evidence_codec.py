"""A moment's Evidence as JSON and back: how both stores and the WHIP page keep it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from livesense.records import Evidence, OcrLine, SeenObject, TrackSpan, Word

_EVIDENCE_FIELDS = tuple(f.name for f in dataclasses.fields(Evidence))


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def evidence_to_json(ev: Evidence) -> str:
    """Evidence as JSON (a hand-written asdict: this runs for every stored moment)."""
    d = {f: getattr(ev, f) for f in _EVIDENCE_FIELDS}
    d["words"] = [
        {"text": w.text, "start": w.start, "end": w.end, "prob": w.prob} for w in ev.words
    ]
    d["ocr"] = [{"text": o.text, "box": list(o.box), "score": o.score, "t": o.t} for o in ev.ocr]
    d["events"] = dict(ev.events)
    d["colors"] = list(ev.colors)
    d["objects"] = [
        {"label": o.label, "count": o.count, "score": o.score, "box": list(o.box), "color": o.color}
        for o in ev.objects
    ]
    d["scene"] = dict(ev.scene)
    d["tracks"] = [
        {"id": t.id, "label": t.label, "since": t.since, "until": t.until} for t in ev.tracks
    ]
    return json.dumps(d, default=_jsonable, ensure_ascii=False)


def evidence_from_json(text: str) -> Evidence:
    """Evidence from JSON; fields this version does not know are left out."""
    d = json.loads(text)
    d = {k: v for k, v in d.items() if k in _EVIDENCE_FIELDS}
    d["words"] = [Word(**w) for w in d.get("words", [])]
    d["ocr"] = [
        OcrLine(o["text"], tuple(o["box"]), o["score"], o["t"])  # type: ignore[arg-type]
        for o in d.get("ocr", [])
    ]
    d["objects"] = [
        SeenObject(o["label"], int(o["count"]), float(o["score"]), tuple(o["box"]), o["color"])  # type: ignore[arg-type]
        for o in d.get("objects", [])
    ]
    d["tracks"] = [TrackSpan(**t) for t in d.get("tracks", [])]
    return Evidence(**d)
