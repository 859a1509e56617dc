"""Per-token rate limits shared by every API process through Redis (a real redis-server): two
apps over one Redis spend one budget per token; without Redis each process limits on its own,
and says so, and never lets requests through unlimited."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from livesense.api.app import Services, create_app
from livesense.api.auth import RateLimiter
from livesense.api.limits import REDIS_RETRY, SharedRateLimiter
from livesense.api.tokens import RedisTokenStore
from livesense.config import SecuritySettings
from livesense.memory.redis_store import RedisStore
from livesense.memory.watch import WatchHub
from tests.redis_server import RedisServer, redis_server

ADMIN = "admin-secret-123"
BURST = 5
SECURITY = SecuritySettings(rate_per_minute=1.0, rate_burst=BURST)  # no refill to speak of


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


class App:
    """One API process: the real app over the Redis memory, read-only like `serve --redis`."""

    def __init__(self, url: str, tokens: RedisTokenStore) -> None:
        self.store = RedisStore(url, readonly=True)
        services = Services(
            store=self.store,
            manager=None,
            hub=WatchHub(),
            token=ADMIN,
            tokens=tokens,
            security=SECURITY,
        )
        self.app = create_app(services)
        self.client = TestClient(self.app)

    @property
    def limiter(self) -> RateLimiter:
        limiter: RateLimiter = self.app.state.auth.limiter
        return limiter

    def search(self, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        r = self.client.get("/v1/search", params={"q": "train"}, headers=headers)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and "Too many searches" in r.json()["error"]
        return r.status_code

    def close(self) -> None:
        self.client.close()
        self.store.close()


def test_two_api_processes_share_one_budget_per_token(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    client = redis.Redis.from_url(server.url)
    client.flushall()
    tokens = RedisTokenStore(server.url)
    reader, _ = tokens.create("read", "cam")
    a, b = App(server.url, tokens), App(server.url, tokens)
    try:
        assert isinstance(a.limiter, SharedRateLimiter)
        # alternating between the two processes: BURST answered in all, then 429 from both
        codes = [(a if i % 2 == 0 else b).search(ADMIN) for i in range(2 * BURST + 2)]
        assert codes.count(200) == BURST and codes[:BURST] == [200] * BURST
        assert set(codes[BURST:]) == {429}
        assert a.limiter.limited + b.limiter.limited == BURST + 2
        # another token has its own budget, in its own slot (one key per caller, hash-tagged)
        assert [b.search(reader) for _ in range(BURST + 1)] == [200] * BURST + [429]
        keys = sorted(k.decode() for k in client.keys("ls:{rate:*"))
        assert len(keys) == 2 and "ls:{rate:admin}" in keys
        assert all(0 < client.ttl(k) <= 5 * 60 + 2 for k in keys)
        assert a.limiter.fallbacks == b.limiter.fallbacks == 0  # type: ignore[attr-defined]

        # Redis goes away: each process limits on its own (no requests let through unlimited)
        caplog.set_level(logging.WARNING, logger="livesense.api")
        server.kill()
        t0 = time.monotonic()
        local = [a.search(ADMIN) for _ in range(BURST + 2)]  # (scoped tokens live in Redis)
        assert local.count(429) == 2 and 429 not in local[:BURST]
        assert set(local[:BURST]) == {503}  # the store cannot be reached: try again later
        assert time.monotonic() - t0 < 10.0  # one short timeout, then no waiting on Redis
        assert a.limiter.fallbacks == BURST + 2  # type: ignore[attr-defined]
        assert any("rate limits are per process" in r.getMessage() for r in caplog.records)
        # ... and when it is back (buckets are not persisted: full again), one budget again
        server.start()
        time.sleep(REDIS_RETRY + 0.2)
        codes = [(a if i % 2 == 0 else b).search(ADMIN) for i in range(2 * BURST)]
        # (a store's first read after the restart may fail on a stale connection: not a 429)
        assert [c == 429 for c in codes] == [False] * BURST + [True] * BURST, codes
        assert a.limiter.last_error is None  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()
        tokens.close()
        client.close()
