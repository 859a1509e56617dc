"""Where a new source of a stream starts on its clock: one stream id, one timeline.

A live source that is restarted continues its stream after what is stored. A recording (a
file, an HTTP download) for a stream that already holds moments is refused with a sentence
that says what to do, or, asked to append, starts right after them with a gap marker at the
seam. Nothing is stored and then silently dropped.
"""

from __future__ import annotations

from livesense.errors import LivesenseError
from livesense.memory.store_base import Store

__all__ = ["StreamExistsError", "plan_start", "reuse_refusal", "stored_end"]


class StreamExistsError(LivesenseError):
    """A recorded source was given a stream id that already holds moments, without append."""

    status = 409


def reuse_refusal(stream: str, end: float, *, via: str = "any") -> StreamExistsError:
    """The sentence that refuses a second recording for `stream` and says what to do instead
    (via: "cli", "api" or "any")."""
    how = {
        "cli": (
            "add --append to continue it after them, give this source its own id with "
            f"--stream NAME, or delete it first with `livesense streams delete {stream}`"
        ),
        "api": (
            'send "append": true to continue it after them, give this source another '
            f'"stream" id, or delete it first (DELETE /v1/streams/{stream}?data=true)'
        ),
        "any": (
            "append this source after them (--append, or \"append\": true in the API), give "
            "it another stream id, or delete the stream first"
        ),
    }[via]
    return StreamExistsError(
        f"Stream {stream} already holds moments up to {end:.1f} s from another source: {how}."
    )


def stored_end(store: Store, stream: str, before: int | None = None) -> float:
    """Where the stream's stored moments end (stream seconds); with `before`: where the moment
    covering snippet before-1 ends."""
    if before is not None:
        rec = store.get(stream, before - 1) if before > 0 else None
        return 0.0 if rec is None else float(rec.end)
    summary = store.summary(stream)
    return 0.0 if summary is None else float(summary.end)


def plan_start(store: Store, stream: str, url: str, *, append: bool, via: str) -> int | None:
    """The snippet index a new source of `stream` starts at, decided before it is opened:
    0 for a new stream, after what is stored with `append`; None where the source decides
    once open (a live source continues after what is stored, a recording is refused).
    A local file for a stream that holds moments is refused here, without `append`."""
    stored = store.next_index(stream)
    if stored == 0:
        return 0
    if append:
        return stored
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme == "file":
        raise reuse_refusal(stream, stored_end(store, stream), via=via)
    return None
