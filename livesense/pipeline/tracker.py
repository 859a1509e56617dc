"""ObjectTracker: follows detected objects across frames and snippets by box overlap (IoU).

Each detection joins the live track of its class whose last box overlaps it most (IoU at
least `min_iou`), or starts a new track. A track not seen for more than `patience`
consecutive looks has left; its span (since, until) is reported once, in the snippet where
it ended, so memory knows when each object appeared and left. One tracker per stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from livesense.records import Detection, TrackSpan

MIN_IOU = 0.3
PATIENCE = 1  # looks a track may miss (a flicker of the detector) before it has left


@dataclass(slots=True)
class _Track:
    id: int
    label: str
    box: tuple[float, float, float, float]
    since: float
    last: float
    missed: int = 0


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ObjectTracker:
    """IoU tracks of one stream. Not thread-safe: one vision stage per stream uses it."""

    def __init__(self, min_iou: float = MIN_IOU, patience: int = PATIENCE) -> None:
        self.min_iou = min_iou
        self.patience = patience
        self._tracks: list[_Track] = []
        self._next = 1

    def update(self, detections: list[Detection], t: float) -> list[TrackSpan]:
        """Assign `track` on each detection (seen at time `t`); the spans of the tracks in
        view now, and of those that left at this look (with `until` set)."""
        pairs = sorted(
            (
                (iou(d.box, tr.box), di, ti)
                for di, d in enumerate(detections)
                for ti, tr in enumerate(self._tracks)
                if d.label == tr.label
            ),
            reverse=True,
        )
        used_d: set[int] = set()
        used_t: set[int] = set()
        for overlap, di, ti in pairs:
            if overlap < self.min_iou:
                break
            if di in used_d or ti in used_t:
                continue
            used_d.add(di)
            used_t.add(ti)
            tr = self._tracks[ti]
            tr.box, tr.last, tr.missed = detections[di].box, t, 0
            detections[di].track = tr.id
        for di, d in enumerate(detections):
            if di not in used_d:
                tr = _Track(self._next, d.label, d.box, t, t)
                self._next += 1
                self._tracks.append(tr)
                used_t.add(len(self._tracks) - 1)
                d.track = tr.id
        spans: list[TrackSpan] = []
        alive: list[_Track] = []
        for ti, tr in enumerate(self._tracks):
            if ti not in used_t:
                tr.missed += 1
                if tr.missed > self.patience:
                    spans.append(TrackSpan(tr.id, tr.label, tr.since, tr.last))
                    continue
            alive.append(tr)
            if tr.missed == 0:
                spans.append(TrackSpan(tr.id, tr.label, tr.since))
        self._tracks = alive
        return sorted(spans, key=lambda s: s.id)

    def carry(self, t: float) -> list[TrackSpan]:
        """The picture has not changed since the last look: what was in view still is (at
        `t`), and what was missing then misses once more."""
        spans: list[TrackSpan] = []
        alive: list[_Track] = []
        for tr in self._tracks:
            if tr.missed == 0:
                tr.last = t
                spans.append(TrackSpan(tr.id, tr.label, tr.since))
            else:
                tr.missed += 1
                if tr.missed > self.patience:
                    spans.append(TrackSpan(tr.id, tr.label, tr.since, tr.last))
                    continue
            alive.append(tr)
        self._tracks = alive
        return sorted(spans, key=lambda s: s.id)
