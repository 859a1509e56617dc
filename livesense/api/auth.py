"""Who is asking (the admin token or a scoped token), what they may touch, and how often.

The admin token (from --token, a token file or LIVESENSE_SERVER__TOKEN) may do anything.
A scoped token may read or publish one stream (or, scoped admin, both and stop it); other
streams answer 403 and are filtered out of every listing. Without an admin token the
service is open and binds to loopback only. Wrong tokens are rate-limited per client address
(429 once its bucket is spent), and what a scoped token opened (watch sockets, WHIP sessions)
is ended within `security.revocation_seconds` of its revocation (OpenGrants).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from livesense.api.tokens import Scope, TokenStore
from livesense.config import SecuritySettings
from livesense.errors import ConfigError, LivesenseError

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_TOKEN = 8  # characters an admin token has at least
log = logging.getLogger("livesense.api")


class AuthError(LivesenseError):
    """No token, or not a valid one."""

    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="livesense"'}


class ForbiddenError(LivesenseError):
    """A valid token that does not cover what was asked."""

    status = 403


class RateLimited(LivesenseError):
    """Too many queries from one token; `retry_after` says when to try again."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller as the API sees it: a scope, a stream (None: all), a rate-limit key."""

    name: str
    scope: Scope
    stream: str | None
    key: str

    @property
    def is_admin(self) -> bool:
        """May do everything, on every stream (the admin token, or no token configured)."""
        return self.scope is Scope.ADMIN and self.stream is None

    def may(self, action: Scope, stream: str) -> bool:
        if self.stream is not None and stream != self.stream:
            return False
        return self.scope is Scope.ADMIN or self.scope is action

    def require(self, action: Scope, stream: str) -> None:
        """Raise 403 unless this caller may `action` on `stream`."""
        if not self.may(action, stream):
            verb = {"read": "read", "publish": "publish to", "admin": "manage"}[action.value]
            raise ForbiddenError(f"This token may not {verb} stream {stream[:64]}.")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("Only the admin token may do this.")

    def narrow(self, stream: str | None, action: Scope = Scope.READ) -> str | None:
        """The stream a query may look at: the one asked for if allowed, else the token's."""
        if stream is not None:
            self.require(action, stream)
            return stream
        if self.stream is not None:
            self.require(action, self.stream)
        return self.stream

    def sees(self, stream: str) -> bool:
        return self.stream is None or stream == self.stream


ANONYMOUS = Principal("anonymous", Scope.ADMIN, None, "anonymous")


class RateLimiter:
    """A token bucket per key (`burst` at once, `per_minute` on average), LRU-bounded."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 10000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self.limited = 0  # requests answered 429
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, what: str = "queries") -> None:
        """Spend one request of `key`; RateLimited (429) when its bucket is empty."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise self.refused(what, tokens)
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)

    def peek(self, key: str) -> float:
        """Requests `key` may send now (its bucket, refilled), without spending one."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def refused(self, what: str, tokens: float) -> RateLimited:
        """The 429 for a bucket holding `tokens` (< 1), counted."""
        self.limited += 1
        wait = (1.0 - tokens) / self.rate
        return RateLimited(
            f"Too many {what}: this token may send {self.rate * 60:g} a minute; "
            f"try again in {max(1, math.ceil(wait))} s.",
            wait,
        )


def read_token_file(path: Path) -> str:
    """The admin token kept in a file (first line, surrounding space stripped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"The token file {path} cannot be read: {e.strerror or e}.") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"The token file {path} must hold a token of at least {MIN_TOKEN} characters."
        )
    return token


def check_admin_token(token: str) -> str:
    """The admin token given on the command line or in the environment, if strong enough."""
    if len(token.strip()) < MIN_TOKEN:
        raise ConfigError(
            f"The admin token must be at least {MIN_TOKEN} characters long; a short one is "
            "guessed quickly. Prefer --token-file or LIVESENSE_SERVER__TOKEN (a --token shows "
            "in the process list)."
        )
    return token.strip()


class Authenticator:
    """Resolves bearer tokens to Principals and rate-limits queries per token."""

    def __init__(
        self,
        admin_token: str | None,
        tokens: TokenStore | None = None,
        settings: SecuritySettings | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        s = settings or SecuritySettings()
        self.admin_token = admin_token
        self.tokens = tokens
        # per process, or shared by every API process through Redis (api.limits)
        self.limiter = limiter or RateLimiter(s.rate_per_minute, s.rate_burst, s.rate_keys)
        # wrong tokens, per client address (per process): guessing is slow
        self.failures = RateLimiter(s.auth_failures_per_minute, s.auth_failure_burst, s.rate_keys)
        self.denied = 0  # requests answered 401/403

    @property
    def enabled(self) -> bool:
        return self.admin_token is not None

    def principal(self, presented: str | None, client: str | None = None) -> Principal:
        """Who presented this token (None: none); AuthError when a token is needed."""
        given = (presented or "").strip()
        admin = self.admin_token
        guessing = f"c:{client or 'local'}"
        if given and self.enabled and self.failures.peek(guessing) < 1.0:
            self.denied += 1
            raise self._too_many_failures(guessing)
        if admin is not None and given and hmac.compare_digest(given.encode(), admin.encode()):
            return Principal("admin", Scope.ADMIN, None, "admin")
        if given and self.tokens is not None:
            info = self.tokens.lookup(given)
            if info is not None:
                return Principal(f"token {info.id}", info.scope, info.stream, f"t:{info.id}")
        if not self.enabled:
            return Principal("anonymous", Scope.ADMIN, None, f"c:{client or 'local'}")
        self.denied += 1
        if given:
            with contextlib.suppress(RateLimited):
                self.failures.take(guessing, "wrong tokens")
        raise AuthError("A valid 'Authorization: Bearer <token>' header is required.")

    def _too_many_failures(self, key: str) -> RateLimited:
        wait = (1.0 - self.failures.peek(key)) / self.failures.rate
        self.failures.limited += 1
        return RateLimited(
            f"Too many wrong tokens from this address: try again in {max(1, math.ceil(wait))} s.",
            wait,
        )

    def still_valid(self, presented: str) -> bool:
        """Whether a token that was valid still is (False once revoked)."""
        given = presented.strip()
        admin = self.admin_token
        if admin is not None and hmac.compare_digest(given.encode(), admin.encode()):
            return True
        return self.tokens is not None and self.tokens.lookup(given) is not None

    def from_header(self, authorization: str | None, client: str | None = None) -> Principal:
        return self.principal(bearer_token(authorization), client)

    def limit(self, who: Principal, what: str = "queries") -> None:
        self.limiter.take(who.key, what)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an 'Authorization: Bearer <token>' header (None for any other scheme)."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class OpenGrants:
    """What scoped tokens opened and keep open (watch sockets, WHIP sessions): every `period`
    seconds each token still holding something is looked up again (in the token store every
    process shares: the memory's tokens.db or Redis), and what a revoked token holds is ended.
    A revocation thus ends them within `period` plus one lookup, in every process."""

    def __init__(self, authn: Authenticator, period: float) -> None:
        self.authn = authn
        self.period = period
        self.ended = 0  # sockets and sessions ended by a revocation
        self._held: dict[int, tuple[str, Callable[[], Awaitable[None]]]] = {}
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    def hold(self, who: Principal, token: str, end: Callable[[], Awaitable[None]]) -> int | None:
        """Watch `token` while something it opened is open; `end` ends that. None (nothing to
        watch) for the admin token and the open API: they cannot be revoked."""
        if not who.key.startswith("t:"):
            return None
        self._next += 1
        self._held[self._next] = (token, end)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="revocations")
        return self._next

    def release(self, handle: int | None) -> None:
        if handle is not None:
            self._held.pop(handle, None)

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(self.period)
            await self.check()

    async def check(self) -> int:
        """Look every held token up once; end what revoked ones hold. How many were ended."""
        tokens = {token for token, _ in self._held.values()}
        revoked: set[str] = set()
        for token in tokens:
            try:
                valid = await asyncio.to_thread(self.authn.still_valid, token)
            except LivesenseError as e:  # the token store is out of reach: look again later
                log.warning("could not check open tokens for revocation: %s", e)
                return 0
            if not valid:
                revoked.add(token)
        ended = 0
        for handle, (token, end) in list(self._held.items()):
            if token in revoked and self._held.pop(handle, None) is not None:
                ended += 1
                try:
                    await end()
                except Exception:  # one failing end must not keep the others open
                    log.exception("ending what a revoked token held failed")
        self.ended += ended
        return ended

    async def close(self) -> None:
        self._held.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def bind_host(host: str, admin_token: str | None) -> tuple[str, str | None]:
    """The address to bind and, when it was narrowed to loopback, a sentence saying why."""
    if admin_token is not None or host in LOOPBACK:
        return host, None
    return "127.0.0.1", (
        f"no admin token is configured, so the API listens on 127.0.0.1 only, not {host}; "
        "give --token, --token-file or LIVESENSE_SERVER__TOKEN to serve other machines"
    )
