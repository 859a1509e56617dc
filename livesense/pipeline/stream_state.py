"""What a stream is doing, as one enum with the transitions it allows."""

from __future__ import annotations

from enum import StrEnum


class StreamState(StrEnum):
    """A stream's state; the values are those of the status JSON, the CLI and the work list.

    A pipeline goes STARTING -> RUNNING -> DONE (the source ended), STOPPED (asked to stop)
    or ERROR (it could not go on); it may stop or fail while starting. QUEUED (wanted, no
    worker has it) and STOPPING (asked to stop, its worker has not yet) are the work list's.
    """

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"

    @property
    def active(self) -> bool:
        """Whether the stream is still being ingested (starting or running)."""
        return self in (StreamState.STARTING, StreamState.RUNNING)

    def can_become(self, new: StreamState) -> bool:
        """Whether a stream in this state may move to `new`."""
        return new in _NEXT[self]

    def to(self, new: StreamState) -> StreamState:
        """`new`, checked: ValueError for a transition this state does not allow."""
        if not self.can_become(new):
            raise ValueError(f"a stream cannot go from {self.value} to {new.value}")
        return new


_NEXT: dict[StreamState, frozenset[StreamState]] = {
    StreamState.QUEUED: frozenset({StreamState.STARTING, StreamState.STOPPED}),
    StreamState.STARTING: frozenset(
        {StreamState.RUNNING, StreamState.DONE, StreamState.STOPPED, StreamState.ERROR}
    ),
    StreamState.RUNNING: frozenset(
        {StreamState.STOPPING, StreamState.DONE, StreamState.STOPPED, StreamState.ERROR}
    ),
    StreamState.STOPPING: frozenset({StreamState.STOPPED, StreamState.DONE, StreamState.ERROR}),
    StreamState.DONE: frozenset(),
    StreamState.STOPPED: frozenset(),
    StreamState.ERROR: frozenset(),
}
