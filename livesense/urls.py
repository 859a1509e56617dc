"""Source URLs as shown and as sent: credentials never leave the process that opens the source.

`shown_url` is what the API, logs, metrics, the page, the timeline and Redis may hold: the
userinfo (user and password) becomes `***` and so do the values of query parameters that
name a secret (`?token=`, `?password=`, `?sig=`...). The real URL stays in the memory of the
process that opens the source. When it must travel to a worker through Redis, `seal_url`
encrypts it (Fernet: AES-CBC with an HMAC) with `security.source_key`, a secret every API
process and worker is given and Redis never sees; `open_url` turns it back on the worker.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from livesense.errors import ConfigError, LivesenseError, missing_package

SECRET_PARAMS = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "token", "access_token", "auth",
    "auth_token", "authorization", "key", "apikey", "api_key", "sig", "signature",
    "credential", "credentials", "session", "sessionid",
})  # fmt: skip
HIDDEN = "***"


def has_secrets(url: str) -> bool:
    """Whether the URL carries credentials (userinfo, or a secret-named query parameter)."""
    return shown_url(url) != url


def shown_url(url: str) -> str:
    """The URL with its credentials hidden ('rtsp://***@cam/live'); anything not parsed as
    a URL with a scheme (a file path, a device) is returned as it is."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed authority: hide all of it
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{HIDDEN}" + ("/" + rest.split("/", 1)[1] if "/" in rest else "")
    netloc = parts.netloc
    if "@" in netloc:
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        netloc = f"{HIDDEN}@{host}" + (f":{port}" if port is not None else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, HIDDEN if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _fernet(key: str) -> object:
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise missing_package("cryptography", "Sealing source URLs", extra="redis") from None
    digest = hashlib.sha256(b"livesense source key\0" + key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal_url(url: str, key: str | None) -> str:
    """The URL encrypted with `key` (security.source_key), for Redis to carry unread."""
    if not key:
        raise ConfigError(
            f"The URL {shown_url(url)} holds credentials, and they are never written to Redis "
            "in the clear: give every API process and worker the same security.source_key "
            "(LIVESENSE_SECURITY__SOURCE_KEY) so they travel encrypted."
        )
    return _fernet(key).encrypt(url.encode()).decode()  # type: ignore[attr-defined]


def open_url(sealed: str, key: str | None) -> str:
    """The URL `seal_url` encrypted, or LivesenseError when this process lacks the key."""
    from cryptography.fernet import InvalidToken

    if not key:
        raise LivesenseError(
            "This stream's URL holds credentials sealed with security.source_key, and this "
            "worker has no source_key."
        )
    try:
        return bytes(_fernet(key).decrypt(sealed.encode())).decode()  # type: ignore[attr-defined]
    except (InvalidToken, ValueError):
        raise LivesenseError(
            "This stream's URL was sealed with another security.source_key than this worker's."
        ) from None
