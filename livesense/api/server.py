"""The uvicorn server the CLI runs: SIGTERM/SIGINT end serving and return, so the caller can
drain its streams and flush memory before the process exits (uvicorn alone re-raises the
signal at once, which would kill the process before that).

Requests that are not HTTP at all (a raw newline in the request line, a request line or head
longer than the parser holds) never reach the app: `Http11Protocol` answers them like the app
answers its refusals (414, 431 or 400 with a JSON reason), then reads and drops what the client
still sends for a moment before closing, so that a client still sending gets the answer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD = 16 * 1024
"""Longest request line plus headers (bytes) the HTTP parser waits for while they arrive."""
LINGER = 2.0
"""Seconds a refused connection is read and dropped before it closes."""
LINGER_BYTES = 16 << 20
"""At most this much of a refused request is read and dropped."""


def server_config(app: Any, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's configuration with this service's HTTP/1.1 protocol."""
    return uvicorn.Config(app, http=Http11Protocol, h11_max_incomplete_event_size=MAX_HEAD,
                          **kwargs)


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
