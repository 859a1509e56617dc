"""RedisKeys: every Redis key livesense uses, designed for Redis Cluster.

All keys of one stream carry the stream id as their hash tag (`ls:{cam1}:...`), so they live
in one slot and every write of a stream is one atomic script on one node. Keys shared by all
streams live under two other tags: `{streams}` (the registry and the change hint feed) and
`{work}` (the work list of the workers). No command or script ever touches two tags.
"""

from __future__ import annotations

import hashlib
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

    def gaps(self, stream: str) -> str:
        """ZSET of gap markers: member 'start:end' (stream seconds, ms), score the start."""
        return f"{self.tag(stream)}:gaps"

    def gap_reasons(self, stream: str) -> str:
        """HASH: gap marker member -> why media is missing there."""
        return f"{self.tag(stream)}:gapwhy"

    def parse_record(self, key: bytes | str) -> tuple[str, int] | None:
        """(stream, index) from a record key, None for any other key."""
        text = key.decode() if isinstance(key, bytes) else key
        head = f"{self.prefix}:{{"
        stream, sep, index = text.removeprefix(head).partition("}:r:")
        if not text.startswith(head) or not sep or not index.isdigit():
            return None
        return stream, int(index)

    # -- all streams ---------------------------------------------------------------------

    @property
    def streams(self) -> str:
        """SET of stream ids with stored moments."""
        return f"{self.prefix}:{{streams}}:all"

    @property
    def vectors_filled(self) -> str:
        """STRING set once every record stored before the vector index existed has its vector
        fields (absent: a process that was filling them died, and the next one goes on)."""
        return f"{self.prefix}:{{index}}:filled"

    @property
    def vector_index(self) -> str:
        """Name of the query engine's index over every record (not a key: Redis keeps index
        names apart). It covers the keys under `records_under` that name a record; on a
        cluster each node indexes its own slots' records."""
        return f"{self.prefix}:records"

    @property
    def records_under(self) -> str:
        """The key prefix of every stream's keys (the index filters it down to records)."""
        return f"{self.prefix}:{{"

    @property
    def feed(self) -> str:
        """STREAM of stream ids just written: a hint that wakes query processes."""
        return f"{self.prefix}:{{streams}}:feed"

    def rate(self, key: str) -> str:
        """HASH: the token bucket of one caller of the API (tokens, last refill), in a slot of
        its own (a key with braces in it is named by its hash instead)."""
        if "{" in key or "}" in key:
            key = "h:" + hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}:{{rate:{key}}}"

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
