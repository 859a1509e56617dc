"""Request size limits as ASGI middleware: long paths and query strings get 414, large bodies 413.

Checked before any route runs, so no endpoint ever reads more than the limit; a body sent
without a Content-Length is counted as it streams in.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livesense.config import SecuritySettings


class RequestLimits:
    """Refuses oversize requests with a JSON reason before they reach the app."""

    def __init__(self, app: ASGIApp, settings: SecuritySettings | None = None) -> None:
        self.app = app
        self.settings = settings or SecuritySettings()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        s = self.settings
        path = scope.get("raw_path") or scope.get("path", "").encode()
        query = scope.get("query_string", b"")
        reason: tuple[int, str] | None = None
        if len(path) > s.max_path_bytes:
            reason = 414, f"The request path is longer than {s.max_path_bytes} bytes."
        elif len(query) > s.max_query_bytes:
            reason = 414, f"The query string is longer than {s.max_query_bytes} bytes."
        elif scope["type"] == "http":
            length = _content_length(scope)
            if length == -1:
                reason = 400, "The Content-Length header is not a number."
            elif length is not None and length > s.max_body_bytes:
                reason = 413, f"The request body is larger than {s.max_body_bytes} bytes."
        if reason is not None:
            self.refused += 1
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1009, "reason": reason[1]})
                return
            await _answer(send, *reason)
            return
        if scope["type"] == "http":
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        limit = self.settings.max_body_bytes
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    self.refused += 1
                    raise HTTPException(413, f"The request body is larger than {limit} bytes.")
            return message

        return counted


def _content_length(scope: Scope) -> int | None:
    """The stated body length; None when absent, -1 when not a number."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else -1
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
