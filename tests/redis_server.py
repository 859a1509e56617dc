"""A real redis-server for tests: started on a free port with AOF in a temporary folder.

No fakes: tests talk to Debian's redis-server. Without it the tests are skipped with a reason,
except under CI (CI set), where a missing server fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_redis_server() -> str:
    """The redis-server program, or skip (fail under CI) when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (make sysdeps installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


class RedisServer:
    """One redis-server process: start, kill, restart on the same port and data folder."""

    def __init__(self, folder: Path, *, fsync: str = "always") -> None:
        self.program = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.program, "--port", str(self.port), "--bind", "127.0.0.1",
            "--appendonly", "yes", "--appendfsync", self.fsync, "--dir", str(self.folder),
            "--save", "", "--protected-mode", "no", "--daemonize", "no",
        ]  # fmt: skip
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.folder / "redis.log").read_text()
                raise RuntimeError(f"redis-server exited: {log_text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 20 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


def redis_server(folder: Path, fsync: str = "always") -> Iterator[RedisServer]:
    """A started server, stopped afterwards (use from a fixture)."""
    server = RedisServer(folder, fsync=fsync)
    server.start()
    try:
        yield server
    finally:
        server.stop()
