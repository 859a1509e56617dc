"""Who is asking (the admin token or a scoped token), what they may touch, and how often.

The admin token (from --token, a token file or LIVESENSE_SERVER__TOKEN) may do anything.
A scoped token may read or publish one stream (or, scoped admin, both and stop it); other
streams answer 403 and are filtered out of every listing. Without an admin token the
service is open and binds to loopback only.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from livesense.api.tokens import Scope, TokenStore
from livesense.config import SecuritySettings
from livesense.errors import ConfigError, LivesenseError

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


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
    if len(token) < 8:
        raise ConfigError(f"The token file {path} must hold a token of at least 8 characters.")
    return token


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
        self.denied = 0  # requests answered 401/403

    @property
    def enabled(self) -> bool:
        return self.admin_token is not None

    def principal(self, presented: str | None, client: str | None = None) -> Principal:
        """Who presented this token (None: none); AuthError when a token is needed."""
        given = (presented or "").strip()
        admin = self.admin_token
        if admin is not None and given and hmac.compare_digest(given.encode(), admin.encode()):
            return Principal("admin", Scope.ADMIN, None, "admin")
        if given and self.tokens is not None:
            info = self.tokens.lookup(given)
            if info is not None:
                return Principal(f"token {info.id}", info.scope, info.stream, f"t:{info.id}")
        if not self.enabled:
            return Principal("anonymous", Scope.ADMIN, None, f"c:{client or 'local'}")
        self.denied += 1
        raise AuthError("A valid 'Authorization: Bearer <token>' header is required.")

    def from_header(self, authorization: str | None, client: str | None = None) -> Principal:
        scheme, _, value = (authorization or "").partition(" ")
        return self.principal(value if scheme.lower() == "bearer" else None, client)

    def limit(self, who: Principal, what: str = "queries") -> None:
        self.limiter.take(who.key, what)


def bind_host(host: str, admin_token: str | None) -> tuple[str, str | None]:
    """The address to bind and, when it was narrowed to loopback, a sentence saying why."""
    if admin_token is not None or host in LOOPBACK:
        return host, None
    return "127.0.0.1", (
        f"no admin token is configured, so the API listens on 127.0.0.1 only, not {host}; "
        "give --token, --token-file or LIVESENSE_SERVER__TOKEN to serve other machines"
    )
