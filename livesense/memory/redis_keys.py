"""RedisKeys: every Redis key livesense uses, designed for Redis Cluster.

All keys of one stream carry the stream id as their hash tag (`ls:{cam1}:...`), so they live
in one slot and every write of a stream is one atomic script on one node. Keys shared by all
streams live under two other tags: `{streams}` (the registry and the change hint feed) and
`{work}` (the work list of the workers). No command or script ever touches two tags.
"""

from __future__ import annotations

from dataclasses import dataclass

from livesense.memory.search import check_stream


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names under one prefix (several deployments may share a server)."""

    prefix: str = "ls"

    def tag(self, stream: str) -> str:
        return f"{self.prefix}:{{{check_stream(stream)}}}"

    # -- one stream (one slot) -------------------------------------------------------------

    def record(self, stream: str, index: int) -> str:
        """HASH of one stored record, named by its first snippet index."""
        return f"{self.tag(stream)}:r:{int(index)}"

    def record_prefix(self, stream: str) -> str:
        return f"{self.tag(stream)}:r:"

    def timeline(self, stream: str) -> str:
        """ZSET of the records: member 'first:last' snippet index, score the first index."""
        return f"{self.tag(stream)}:tl"

    def meta(self, stream: str) -> str:
        """HASH: the abstract summary and the last applied write (writer token, sequence)."""
        return f"{self.tag(stream)}:meta"

    def changes(self, stream: str) -> str:
        """STREAM of changes (records put and dropped) that query processes follow."""
        return f"{self.tag(stream)}:chg"

    def queried(self, stream: str) -> str:
        """SET of snippet indices returned by queries since the writer last looked."""
        return f"{self.tag(stream)}:q"

    def lease(self, stream: str) -> str:
        """STRING: the token of the process that ingests the stream, with a time to live."""
        return f"{self.tag(stream)}:lease"

    def keyframe(self, stream: str, index: int) -> str:
        """STRING: JPEG bytes of a record's keyframe."""
        return f"{self.tag(stream)}:kf:{int(index)}"

    # -- all streams ---------------------------------------------------------------------

    @property
    def streams(self) -> str:
        """SET of stream ids with stored moments."""
        return f"{self.prefix}:{{streams}}:all"

    @property
    def feed(self) -> str:
        """STREAM of stream ids just written: a hint that wakes query processes."""
        return f"{self.prefix}:{{streams}}:feed"

    # -- the work list -------------------------------------------------------------------

    @property
    def specs(self) -> str:
        """HASH stream -> what to ingest (url, realtime, wanted)."""
        return f"{self.prefix}:{{work}}:specs"

    @property
    def status(self) -> str:
        """HASH stream -> the ingest status its owner last reported."""
        return f"{self.prefix}:{{work}}:status"

    @property
    def workers(self) -> str:
        """HASH worker id -> its last heartbeat."""
        return f"{self.prefix}:{{work}}:workers"

    @property
    def wake(self) -> str:
        """Pub/sub channel: the work list changed."""
        return f"{self.prefix}:{{work}}:wake"

    def parse_member(self, member: bytes | str) -> tuple[int, int]:
        """(first, last) snippet index from a timeline member."""
        text = member.decode() if isinstance(member, bytes) else member
        first, _, last = text.partition(":")
        return int(first), int(last)
