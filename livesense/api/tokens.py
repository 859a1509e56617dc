"""Scoped API tokens, kept only as SHA-256 hashes: in a SQLite file beside the memory, or in Redis.

A token is `ls_<id>_<secret>`: `id` (8 hex digits) names it in listings and revocations, the
secret (32 random bytes) makes it unguessable, so a plain SHA-256 is a safe hash to keep.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from livesense.errors import ConfigError, LivesenseError, NotFoundError, missing_package
from livesense.urls import shown_url

TOKEN_FILE = "tokens.db"
_TOKEN = re.compile(r"ls_([0-9a-f]{8})_[A-Za-z0-9_-]{20,64}")
_ID = re.compile(r"[0-9a-f]{8}")


class Scope(StrEnum):
    """What a token may do with its stream: read it, publish to it, or both and stop it."""

    READ = "read"
    PUBLISH = "publish"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One issued token as stored: never the token itself."""

    id: str
    scope: Scope
    stream: str | None  # None: every stream
    created: float
    revoked: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope.value,
            "stream": self.stream,
            "created": self.created,
            "revoked": self.revoked,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh (id, token) pair."""
    tid = secrets.token_hex(4)
    return tid, f"ls_{tid}_{secrets.token_urlsafe(32)}"


def _token_id(id_or_token: str) -> str:
    given = id_or_token.strip()
    m = _TOKEN.fullmatch(given)
    if m:
        return m.group(1)
    if _ID.fullmatch(given):
        return given
    raise ConfigError("Give a token id (8 hex digits, as `token list` shows) or the token itself.")


def _check(scope: str, stream: str | None) -> tuple[Scope, str | None]:
    from livesense.memory.search import check_stream

    try:
        sc = Scope(scope)
    except ValueError:
        raise ConfigError(f"A token's scope is read, publish or admin, not {scope!r}.") from None
    if stream is not None:
        stream = check_stream(stream)
    elif sc is not Scope.ADMIN:
        raise ConfigError(f"A {sc.value} token needs a stream (--stream S).")
    return sc, stream


class TokenStore:
    """Where tokens live. `lookup` is called on every request; the others by the CLI."""

    def create(self, scope: str, stream: str | None) -> tuple[str, TokenInfo]:
        """Issue a token for `stream` (None: all streams, admin only); returns it once."""
        sc, stream = _check(scope, stream)
        tid, token = new_token()
        info = TokenInfo(id=tid, scope=sc, stream=stream, created=time.time())
        self._put(token_hash(token), info)
        return token, info

    def lookup(self, token: str) -> TokenInfo | None:
        """The live (not revoked) token this is, or None."""
        m = _TOKEN.fullmatch(token)
        if m is None:
            return None
        info = self._get(token_hash(token))
        if info is None or info.revoked is not None or info.id != m.group(1):
            return None
        return info

    def revoke(self, id_or_token: str) -> TokenInfo:
        """Revoke a token by its id or by the token; NotFoundError when there is none."""
        tid = _token_id(id_or_token)
        info = self._revoke(tid, time.time())
        if info is None:
            raise NotFoundError(f"There is no token with id {tid}.")
        return info

    def list(self) -> list[TokenInfo]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (idempotent)."""

    def _put(self, digest: str, info: TokenInfo) -> None:
        raise NotImplementedError

    def _get(self, digest: str) -> TokenInfo | None:
        raise NotImplementedError

    def _revoke(self, tid: str, when: float) -> TokenInfo | None:
        raise NotImplementedError


class SqliteTokenStore(TokenStore):
    """Tokens in `<memory>/tokens.db` (mode 0600), shared by the CLI and the server (WAL)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / TOKEN_FILE
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fresh = not self.path.exists()
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=5
                )
                if fresh:
                    os.chmod(self.path, 0o600)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, id TEXT UNIQUE, "
                    "scope TEXT NOT NULL, stream TEXT, created REAL NOT NULL, revoked REAL)"
                )
            except (sqlite3.Error, OSError) as e:
                raise LivesenseError(f"The token file {self.path} cannot be opened: {e}.") from None
            self._conn = conn
        return self._conn

    @staticmethod
    def _info(row: tuple[Any, ...]) -> TokenInfo:
        tid, scope, stream, created, revoked = row
        return TokenInfo(tid, Scope(scope), stream, float(created), revoked)

    def _put(self, digest: str, info: TokenInfo) -> None:
        with self._lock:
            self._db().execute(
                "INSERT INTO tokens(hash, id, scope, stream, created) VALUES (?, ?, ?, ?, ?)",
                (digest, info.id, info.scope.value, info.stream, info.created),
            )

    def _get(self, digest: str) -> TokenInfo | None:
        if self._conn is None and not self.path.exists():
            return None  # no token was ever issued here
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT id, scope, stream, created, revoked FROM tokens WHERE hash = ?",
                    (digest,),
                )
                .fetchone()
            )
        return None if row is None else self._info(row)

    def _revoke(self, tid: str, when: float) -> TokenInfo | None:
        with self._lock:
            db = self._db()
            db.execute(
                "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (when, tid)
            )
            row = db.execute(
                "SELECT id, scope, stream, created, revoked FROM tokens WHERE id = ?", (tid,)
            ).fetchone()
        return None if row is None else self._info(row)

    def list(self) -> list[TokenInfo]:
        if self._conn is None and not self.path.exists():
            return []
        with self._lock:
            rows = (
                self._db()
                .execute("SELECT id, scope, stream, created, revoked FROM tokens ORDER BY created")
                .fetchall()
            )
        return [self._info(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None


class RedisTokenStore(TokenStore):
    """Tokens in Redis under `<prefix>:{tokens}:...` (one hash slot: cluster-safe)."""

    def __init__(self, url: str, prefix: str = "ls") -> None:
        try:
            import redis
        except ImportError:
            raise missing_package("redis", "Tokens in Redis", "redis") from None
        self.url = url
        self._base = f"{prefix}:{{tokens}}"
        try:
            self._redis: Any = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        except ValueError as e:
            raise ConfigError(f"The Redis URL {url!r} is not valid: {e}.") from None

    def _call(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.RedisError as e:
            raise LivesenseError(
                f"Tokens in Redis at {shown_url(self.url)} are out of reach: {e}."
            ) from None

    def _put(self, digest: str, info: TokenInfo) -> None:
        fields = {"id": info.id, "scope": info.scope.value, "created": repr(info.created)}
        if info.stream is not None:
            fields["stream"] = info.stream
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(f"{self._base}:hash:{digest}", mapping=fields)
        pipe.hset(f"{self._base}:ids", info.id, digest)
        self._call(pipe.execute)

    @staticmethod
    def _info(fields: dict[str, str]) -> TokenInfo | None:
        if not fields:
            return None
        revoked = fields.get("revoked")
        return TokenInfo(
            fields["id"],
            Scope(fields["scope"]),
            fields.get("stream"),
            float(fields["created"]),
            None if revoked is None else float(revoked),
        )

    def _get(self, digest: str) -> TokenInfo | None:
        return self._info(self._call(self._redis.hgetall, f"{self._base}:hash:{digest}"))

    def _revoke(self, tid: str, when: float) -> TokenInfo | None:
        digest = self._call(self._redis.hget, f"{self._base}:ids", tid)
        if digest is None:
            return None
        key = f"{self._base}:hash:{digest}"
        self._call(self._redis.hsetnx, key, "revoked", repr(when))
        return self._get(digest)

    def list(self) -> list[TokenInfo]:
        digests = self._call(self._redis.hvals, f"{self._base}:ids")
        found = [self._get(d) for d in digests]
        return sorted((i for i in found if i is not None), key=lambda i: i.created)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._redis.close()


def open_token_store(
    memory: Path | None, redis_url: str | None = None, prefix: str = "ls"
) -> TokenStore:
    """Tokens in Redis when a URL is given, else in the memory directory."""
    if redis_url:
        return RedisTokenStore(redis_url, prefix)
    if memory is None:
        raise ConfigError("Tokens live in a memory directory (--memory) or in Redis (--redis).")
    return SqliteTokenStore(memory)
