"""The uvicorn server the CLI runs: SIGTERM/SIGINT end serving and return, so the caller can
drain its streams and flush memory before the process exits (uvicorn alone re-raises the
signal at once, which would kill the process before that). The CLI binds the socket first
(`listen`), so a port that cannot be had is one sentence before anything starts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from livesense.errors import LivesenseError


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
