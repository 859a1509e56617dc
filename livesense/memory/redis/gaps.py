"""GapMarks: where a stream had no media, and why. A marker is stored at once by one script in
the stream's slot (idempotent, refused while another process holds the lease); while Redis is
unreachable markers wait in a bounded backlog and go with the next one marked."""

from __future__ import annotations

import threading
from collections import deque

from livesense.errors import LivesenseError
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.pipelined import read
from livesense.memory.tiers import GAPS_KEPT, GapMark

# KEYS: gaps, gap reasons, lease. ARGV: member, start, reason, markers kept, token.
# {1}: stored, {0}: stored already, {-1, holder}: another process ingests the stream.
GAP_LUA = """
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[5] then return {-1, holder} end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return {0} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
return {1}
"""


class GapMarks:
    """Stores and reads gap markers; counts the markers dropped from a full backlog."""

    def __init__(self, link: RedisLink, kept: int = 256) -> None:
        self.link = link
        self.backlog: deque[tuple[str, GapMark]] = deque(maxlen=kept)
        self.dropped = 0
        self._lock = threading.Lock()

    def register(self) -> None:
        """Load the script (once connected)."""
        self._gap = self.link.client.register_script(GAP_LUA)

    def mark(self, stream: str, mark: GapMark) -> None:
        """Store a marker now, after those still waiting; one sentence when Redis is away
        (the marker waits) or another process ingests the stream."""
        k, token = self.link.keys, self.link.token
        with self._lock:
            if len(self.backlog) == self.backlog.maxlen:
                self.dropped += 1
                log.warning(
                    "Redis has been away for %d gap markers: the oldest is dropped (%d so far)",
                    self.backlog.maxlen,
                    self.dropped,
                )
            self.backlog.append((stream, mark))
            while self.backlog:
                s, m = self.backlog[0]
                script = self._gap(
                    keys=[k.gaps(s), k.gap_reasons(s), k.lease(s)],
                    args=[f"{m.start:.3f}:{m.end:.3f}", m.start, m.reason, GAPS_KEPT, token],
                )
                try:
                    result = self.link.call(script, "mark a gap")
                except LivesenseError:
                    raise  # unreachable: the marker waits for the next one
                except Exception:
                    self.backlog.popleft()
                    raise
                self.backlog.popleft()
                if int(result[0]) == -1:
                    raise LivesenseError(
                        f"Stream {s} is being ingested by {result[1].decode()}; "
                        "its gap was not marked here."
                    )

    async def read_marks(self, stream: str) -> list[GapMark]:
        """The stream's gap markers in time order."""
        k = self.link.keys
        members, reasons = await read(
            self.link.client, lambda p: (p.zrange(k.gaps(stream), 0, -1),
                                         p.hgetall(k.gap_reasons(stream)))
        )  # fmt: skip
        out: list[GapMark] = []
        for member in members:
            start, _, end = member.decode().partition(":")
            why = reasons.get(member, b"").decode()
            out.append(GapMark(float(start), float(end), why or "media was missing"))
        return sorted(out, key=lambda g: (g.start, g.end))
