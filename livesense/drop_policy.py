"""What a full bounded queue does with one more item: one vocabulary for every queue.

The media hand-over (stream.handoff), the pipeline's queues (pipeline.queues) and the
cross-stream batcher (engines.batcher) all take a DropPolicy; the values are the words the
settings and the metrics use.
"""

from __future__ import annotations

from enum import StrEnum


class DropPolicy(StrEnum):
    """What a full queue does with one more item.

    WAIT: the producer waits (files: nothing is ever dropped).
    DROP_OLDEST: the oldest queued item goes (live: fresh data beats complete data). Where a
    queue holds several kinds, the cheapest to lose goes first: the media hand-over drops
    the oldest video frame, then the oldest audio chunk; the batcher drops from the stream
    with the most requests queued.
    DROP_NEWEST: the new item goes (keeps what is already queued).
    """

    WAIT = "wait"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"

    @classmethod
    def named(cls, name: str) -> DropPolicy:
        """The policy called `name`; ValueError naming the choices otherwise."""
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown drop policy {name!r} (one of {choices})") from None
