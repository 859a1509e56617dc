"""Leases: which process ingests a stream. A lease is a key with a time to live holding the
writer token of its holder, renewed in the background; a process that finds another holder on
renewal is fenced off the stream (its writes are refused from then on)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from livesense.errors import LivesenseError, StreamBusyError
from livesense.memory.redis.link import RedisLink, log
from livesense.memory.redis.pipelined import read
from livesense.memory.search import check_stream

# KEYS: lease. ARGV: token, ttl (ms). 1: held (renewed or taken back), 0: someone else has it.
RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """The leases this process holds, and the streams it was fenced off (stream -> holder)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.owned: set[str] = set()
        self.fenced: dict[str, str] = {}

    def register(self) -> None:
        """Load the scripts (once connected)."""
        client = self.link.client
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def holder(self, stream: str) -> str | None:
        """The token of the process ingesting the stream, if any."""
        raw = self.link.call(self.link.client.get(self.link.keys.lease(stream)), "read a lease")
        return None if raw is None else raw.decode()

    def acquire(self, stream: str) -> bool:
        """Take the stream's lease (True if it was free or already ours)."""
        link = self.link
        taking = link.client.set(link.keys.lease(stream), link.token, nx=True, px=link.ttl_ms)
        got = link.call(taking, "take a lease")
        if not got and self.holder(stream) != link.token:
            return False
        self.owned.add(stream)
        self.fenced.pop(stream, None)
        return True

    def wait_for(self, stream: str, say: Callable[[str], None] | None = None) -> bool:
        """Take a lease that another process holds once its holder stops renewing it (True);
        a holder seen renewing it (or a third process taking it) ends the wait at once with
        a one-sentence refusal."""
        ttl = self.link.settings.lease_ttl
        key = self.link.keys.lease(stream)
        holder, left = self.link.call(self.state(key), "read a lease")
        if say is not None and holder is not None:
            say(
                f"stream {stream} is still leased to {holder}; waiting up to {left / 1000:.1f} s "
                "for the lease to expire (a process that died no longer renews it)"
            )
        deadline = time.monotonic() + ttl + 1.0
        while time.monotonic() < deadline:
            time.sleep(min(0.2, ttl / 10))
            if self.acquire(stream):
                return True
            now_holder, now_left = self.link.call(self.state(key), "read a lease")
            if now_holder is not None and (now_holder != holder or now_left > left + 50):
                holder = now_holder
                break  # renewed, or taken by someone else: its holder is alive
            if now_holder is not None:
                left = now_left
        raise LivesenseError(
            f"Stream {stream} is being ingested by {holder or 'another process'}; "
            "stop it there first."
        )

    async def state(self, key: str) -> tuple[str | None, int]:
        """(holder, milliseconds left) of a lease; (None, 0) when it is free."""
        raw, left = await read(self.link.client, lambda p: (p.get(key), p.pttl(key)))
        return (None if raw is None else raw.decode()), max(0, int(left))

    def owns(self, stream: str) -> bool:
        """Whether this process still holds the stream's lease (as far as it knows)."""
        return stream in self.owned and stream not in self.fenced

    def give_up(self, stream: str) -> None:
        """Let the stream's lease go (if it is still ours); Redis trouble is ignored, the
        lease then expires by itself."""
        self.owned.discard(stream)
        with contextlib.suppress(LivesenseError):
            self.link.call(self.release(stream), "release a lease")

    async def release(self, stream: str) -> None:
        await self._release(keys=[self.link.keys.lease(stream)], args=[self.link.token])

    @contextlib.asynccontextmanager
    async def holding(self, stream: str) -> AsyncIterator[None]:
        """Hold the stream's lease for a while (taking it if free), so that no writer comes in
        between; refused with one sentence while another process ingests it."""
        link = self.link
        lease = link.keys.lease(check_stream(stream))
        took = await link.client.set(lease, link.token, nx=True, px=link.ttl_ms)
        if not took:
            holder = await link.client.get(lease)
            if holder is not None and holder.decode() != link.token:
                raise StreamBusyError(
                    f"Stream {stream} is being ingested by {holder.decode()}; stop it first."
                )
        try:
            yield
        finally:
            await self.release(stream)

    async def renew_loop(self) -> None:
        """Renew every held lease each third of the TTL; fence off the streams lost."""
        link = self.link
        period = link.settings.lease_ttl / 3
        while True:
            await asyncio.sleep(period)
            for stream in list(self.owned):
                try:
                    held = await self._renew(
                        keys=[link.keys.lease(stream)], args=[link.token, link.ttl_ms]
                    )
                except link.errors():
                    continue  # the write path reports an unreachable server
                if not held:
                    holder = await link.client.get(link.keys.lease(stream))
                    self.fence(stream, holder.decode() if holder else "another process")

    def fence(self, stream: str, holder: str) -> None:
        """Another process holds the stream now: no more writes of it from here."""
        if stream not in self.fenced:
            log.error("stream %s is now ingested by %s; no more writes from here", stream, holder)
        self.fenced[stream] = holder
        self.owned.discard(stream)
