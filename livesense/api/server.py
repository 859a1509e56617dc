"""The uvicorn server the CLI runs: SIGTERM/SIGINT end serving and return, so the caller can
drain its streams and flush memory before the process exits (uvicorn alone re-raises the
signal at once, which would kill the process before that); and its connections guarded as
production servers guard theirs (header timeout, connections per client address). The CLI
binds the socket first (`listen`), so a port that cannot be had is one sentence before anything
starts.

Requests that are not HTTP at all (a raw newline in the request line, a request line or head
longer than the parser holds) never reach the app: `Http11Protocol` answers them like the app
answers its refusals (414, 431 or 400 with a JSON reason), then reads and drops what the client
still sends for a moment before closing, so that a client still sending gets the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from livesense.config import SecuritySettings
from livesense.errors import LivesenseError

MAX_HEAD = 16 * 1024
"""Longest request line plus headers (bytes) the HTTP parser waits for while they arrive."""
LINGER = 2.0
"""Seconds a refused connection is read and dropped before it closes."""
LINGER_BYTES = 16 << 20
"""At most this much of a refused request is read and dropped."""


def server_config(
    app: Any, guard: ConnectionGuard | None = None, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn's configuration with this service's HTTP/1.1 protocol, guarded by `guard`
    (slow headers, connections per client) when given."""
    if guard is None:
        return uvicorn.Config(
            app, http=Http11Protocol, h11_max_incomplete_event_size=MAX_HEAD, **kwargs
        )
    http, ws = guard.protocols(Http11Protocol)
    return uvicorn.Config(
        app, http=http, ws=ws or "none", h11_max_incomplete_event_size=MAX_HEAD, **kwargs
    )


class Http11Protocol(H11Protocol):
    """uvicorn's h11 protocol, refusing what is not HTTP with a status and a JSON reason."""

    _dropping = 0

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn while the parser's error is being handled."""
        error = sys.exc_info()[1]
        head = bytes(getattr(self.conn, "_receive_buffer", b""))[: MAX_HEAD + 2]
        if getattr(error, "error_status_hint", 400) == 431:
            if b"\n" not in head:
                status, reason = 414, f"The request line is longer than {MAX_HEAD} bytes."
            else:
                status, reason = 431, f"The request head is longer than {MAX_HEAD} bytes."
        else:
            why = str(error).split(":")[0].strip().rstrip(".") if error is not None else ""
            status = 400
            reason = f"The request is not valid HTTP ({why})." if why else msg
        body = json.dumps({"error": reason}).encode()
        head_out = (
            f"HTTP/1.1 {status} {h11_reason(status)}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self.transport.write(head_out + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._dropping = 1  # from now on data_received drops what comes
        self.loop.call_later(LINGER, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            self._dropping += len(data)
            if self._dropping > LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)


def h11_reason(status: int) -> str:
    return {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}[
        status
    ]



class Server(uvicorn.Server):
    """uvicorn.Server that keeps the signals it caught in `received` instead of re-raising."""

    received: list[int]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self.received = []
        with super().capture_signals():
            try:
                yield
            finally:
                caught = getattr(self, "_captured_signals", None)
                if isinstance(caught, list):
                    self.received = list(caught)
                    caught.clear()


class ConnectionGuard:
    """What production HTTP servers bound and uvicorn does not: the time a client may take to
    send a request's headers (then 408 and the connection closes), and the connections one
    client address may hold open at once (more get 429 and are closed). Request bodies that
    stall are timed out by the app's RequestLimits (security.body_timeout)."""

    def __init__(self, settings: SecuritySettings) -> None:
        self.header_timeout = settings.header_timeout
        self.max_per_client = settings.max_connections_per_client
        self.open: dict[str, int] = {}
        self.refused = 0  # connections refused: too many from one address
        self.timed_out = 0  # connections closed: headers too slow

    def admit(self, client: str) -> bool:
        held = self.open.get(client, 0)
        if held >= self.max_per_client:
            self.refused += 1
            return False
        self.open[client] = held + 1
        return True

    def release(self, client: str) -> None:
        held = self.open.get(client, 0) - 1
        if held > 0:
            self.open[client] = held
        else:
            self.open.pop(client, None)

    def protocols(
        self, http_cls: type[asyncio.Protocol], ws: str = "auto"
    ) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol] | None]:
        """An HTTP protocol class and uvicorn's WebSocket protocol (as its settings name it),
        guarded."""
        from uvicorn.config import WS_PROTOCOLS
        from uvicorn.importer import import_from_string

        name = f"Guarded{http_cls.__name__}"
        guarded_http = type(name, (_GuardedHTTP, http_cls), {"guard": self})
        ws_name = WS_PROTOCOLS[ws]
        if ws_name is None:
            return guarded_http, None
        ws_cls = import_from_string(ws_name)
        guarded_ws = type(f"Guarded{ws_cls.__name__}", (_GuardedWebSocket, ws_cls), {"guard": self})
        return guarded_http, guarded_ws


def _client_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _refuse(transport: asyncio.BaseTransport, status: int, message: str, **headers: str) -> None:
    """Answer a connection that never reached the app with a JSON sentence, and close it."""
    body = json.dumps({"error": message}).encode()
    reason = {408: "Request Timeout", 429: "Too Many Requests"}.get(status, "Error")
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    transport.close()


class _GuardedHTTP(asyncio.Protocol):
    """Mixin over uvicorn's HTTP protocol (h11 or httptools): counts the client's connections
    and times out requests whose headers are slow to arrive (a new request's time starts when
    the connection opens or the previous response is complete)."""

    guard: ConnectionGuard
    cycle: Any
    transport: Any
    _client: str | None = None
    _timer: asyncio.TimerHandle | None = None
    _armed_for: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = _client_of(transport)
        if not self.guard.admit(client):
            n = self.guard.max_per_client
            _refuse(transport, 429, f"This address already holds {n} connections, the most "
                    "allowed; close some and try again.", **{"Retry-After": "1"})  # fmt: skip
            return
        self._client = client
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._client is None:
            return  # refused: closing
        super().data_received(data)
        if self._timer is not None and (
            self.cycle is not self._armed_for or self.transport.get_protocol() is not self
        ):  # the headers are in (or the connection became a WebSocket)
            self._timer.cancel()
            self._timer = None

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()  # type: ignore[misc]
        if self.cycle is before and not self.transport.is_closing():
            self._arm()  # the next request's headers are awaited

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.release(self._client)
        self._client = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = self.cycle
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._timer = None
        if self.cycle is not self._armed_for or self.transport.is_closing():
            return
        self.guard.timed_out += 1
        _refuse(self.transport, 408, "The request's headers did not arrive within "
                f"{self.guard.header_timeout:g} s.")  # fmt: skip


class _GuardedWebSocket(asyncio.Protocol):
    """Mixin over uvicorn's WebSocket protocol: a connection upgraded from HTTP stays counted
    for its client until it closes."""

    guard: ConnectionGuard
    _client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = _client_of(transport)  # admitted as HTTP, then upgraded
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._client is not None:
            self.guard.release(self._client)
            self._client = None
        super().connection_lost(exc)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening, or LivesenseError saying why not (a port
    out of range, in use, or an address this machine does not have)."""
    if not 0 <= int(port) <= 65535:
        raise LivesenseError(
            f"The port must be between 1 and 65535 (0: any free port), not {port}."
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise LivesenseError(f"Cannot listen on {host}: {_reason(e)}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except (OSError, OverflowError) as e:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        raise LivesenseError(f"Cannot listen on {shown}:{port}: {_reason(e)}") from None
    return sock


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or e.__class__.__name__
    text = " ".join(str(text).split())
    if "in use" in text.lower():
        text += " (another program listens there; choose another --port)"
    return text[0].lower() + text[1:] + ("" if text.endswith(".") else ".")
