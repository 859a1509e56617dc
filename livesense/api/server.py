"""The uvicorn server the CLI runs: SIGTERM/SIGINT end serving and return, so the caller can
drain its streams and flush memory before the process exits (uvicorn alone re-raises the
signal at once, which would kill the process before that)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


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
