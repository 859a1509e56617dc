"""Words for what the camera saw: object phrases ("a red motorcycle", "two people") and the
scene, shared by the Combiner's "seen" token, the lexical index, answers and the timeline.

Detections are put in order of confidence: strong ones (score >= STRONG) are named plainly,
weaker ones come after them as "maybe a dog", so that a doubtful detection neither comes
first nor reads like a certain one, and a query's similarity to the phrase follows the
detector's confidence.
"""

from __future__ import annotations

from livesense.records import Detection, SeenObject

STRONG = 0.5
"""Detections at least this confident are named plainly and indexed as words."""
SCENE_MIN = 0.15
"""Scene labels at least this likely are part of the seen text."""
SCENE_WORDS_MIN = 0.3
"""Scene labels at least this likely are indexed as words."""
MAX_OBJECTS = 4  # object classes named in one phrase

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "skis": "skis",
            "bus": "buses", "glass": "glasses", "couch": "couches", "sandwich": "sandwiches",
            "toothbrush": "toothbrushes"}  # fmt: skip


def plural(label: str) -> str:
    head, _, last = label.rpartition(" ")
    word = _PLURALS.get(last) or (last + "es" if last.endswith(("s", "sh", "ch")) else last + "s")
    return f"{head} {word}".strip()


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def object_phrase(obj: SeenObject) -> str:
    """'a red motorcycle', 'two people', 'an orange cat'."""
    plain = ("grey", "black", "white")
    # A person's colour is their clothes': "a red person" reads wrong, so people get none.
    colored = obj.color and obj.color not in plain and obj.label != "person"
    color = f"{obj.color} " if colored else ""
    if obj.count > 1:
        n = _NUMBERS[obj.count] if obj.count < len(_NUMBERS) else str(obj.count)
        return f"{n} {color}{plural(obj.label)}"
    words = f"{color}{obj.label}"
    return f"{article(words)} {words}"


def summarise(detections: list[Detection]) -> list[SeenObject]:
    """One entry per class: the most seen at once in one frame, the best score, and the box
    and colour of the best detection; best score first."""
    best: dict[str, Detection] = {}
    per_frame: dict[tuple[str, float], int] = {}
    for d in detections:
        if d.label not in best or d.score > best[d.label].score:
            best[d.label] = d
        per_frame[(d.label, d.t)] = per_frame.get((d.label, d.t), 0) + 1
    out = [
        SeenObject(
            label,
            max(n for (lab, _), n in per_frame.items() if lab == label),
            float(d.score),
            tuple(float(v) for v in d.box),  # type: ignore[arg-type]
            d.color,
        )
        for label, d in best.items()
    ]
    return sorted(out, key=lambda o: -o.score)


def scene_labels(scene: dict[str, float], minimum: float = SCENE_MIN) -> list[str]:
    return [k for k, v in sorted(scene.items(), key=lambda kv: -kv[1]) if v >= minimum]


def seen_text(objects: list[SeenObject], scene: dict[str, float]) -> str:
    """What was seen, in words: 'a red motorcycle and a chair, maybe a cup; a moped'."""
    ranked = sorted(objects, key=lambda o: -o.score)[:MAX_OBJECTS]
    strong = [object_phrase(o) for o in ranked if o.score >= STRONG]
    weak = [object_phrase(o) for o in ranked if o.score < STRONG]
    parts: list[str] = []
    if strong:
        parts.append(" and ".join(strong))
    if weak:
        parts.append("maybe " + " or ".join(weak))
    words = ", ".join(parts)
    labels = scene_labels(scene)
    if labels:
        words = f"{words}; {', '.join(labels)}" if words else f"a picture of {', '.join(labels)}"
    return words


def seen_words(objects: list[SeenObject], scene: dict[str, float]) -> list[str]:
    """The labels a moment is found by word: confident objects and likely scene labels."""
    words = [o.label for o in objects if o.score >= STRONG]
    words += [plural(o.label) for o in objects if o.score >= STRONG and o.count > 1]
    return words + scene_labels(scene, SCENE_WORDS_MIN)
