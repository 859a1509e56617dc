"""The `livesense` command: ingest, search, ask, serve, run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from livesense.api.token_cli import token_app
from livesense.config import Settings, load_settings
from livesense.engines.cli import bench_app, engines_app
from livesense.errors import LivesenseError, first_error
from livesense.records import Answer, Hit

app = typer.Typer(
    name="livesense",
    help="Streaming perception: ingest live or recorded audio/video, then search and ask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(engines_app, name="engines")
app.add_typer(bench_app, name="bench")
app.add_typer(token_app, name="token")
out = Console()
err = Console(stderr=True, soft_wrap=True)

MemoryOpt = Annotated[
    Path | None,
    typer.Option("--memory", help="Memory directory (default: memory setting, livesense-memory)."),
]
StreamOpt = Annotated[str | None, typer.Option("--stream", help="Stream id.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (LIVESENSE_* env also read).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis", help="Redis URL (redis://host:port/db): memory shared by many processes."
    ),
]


# The flag behind each setting a command line may set, for messages.
FLAGS = {
    "memory": "--memory",
    "perception.asr_model": "--asr-model",
    "redis.url": "--redis",
    "redis.worker_streams": "--streams",
    "server.host": "--host",
    "server.port": "--port",
    "server.token": "--token",
    "security.token_file": "--token-file",
}


def _settings(config: Path | None, *, service: Any = False, **overrides: Any) -> Settings:
    """File < LIVESENSE_* environment < the flags given (a flag left out is None: unset).

    `log_level` sets the log of the services (serve, run, worker); one-shot commands show
    warnings and errors, and everything at debug.
    """
    settings = load_settings(config, flags=FLAGS, **overrides)
    level = logging.getLevelName(settings.log_level.upper())
    if not service and settings.log_level != "debug":
        level = max(level, logging.WARNING)
    logging.getLogger("livesense").setLevel(level)
    return settings


def _open_store(
    memory: Path, settings: Settings, *, readonly: bool, hub: Any = None, follow: bool = False
) -> Any:
    """The Redis store when a Redis URL is set (follow: keep a query index in sync), else
    the memory directory."""
    from livesense.memory.store import MemoryStore

    if settings.redis.url:
        from livesense.memory.redis_store import RedisStore

        return RedisStore(
            settings.redis.url,
            settings.store,
            settings.redis,
            readonly=readonly,
            follow=follow,
            hub=hub,
            vector_index={"auto": None, "on": True, "off": False}[settings.redis.vector_index],
        )
    if readonly and not (memory / "memory.db").exists():
        raise LivesenseError(
            f"There is no livesense memory in {memory} yet; ingest something first."
        )
    return MemoryStore(memory, settings.store, readonly=readonly, hub=hub)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="File path or URL (rtsp://, http(s)://, v4l2://).")],
    memory: MemoryOpt = None,
    stream: StreamOpt = None,
    realtime: Annotated[
        bool, typer.Option("--realtime", help="Pace a file like a live source.")
    ] = False,
    asr_model: Annotated[
        str | None, typer.Option("--asr-model", help="tiny.en, base, or a CTranslate2 directory.")
    ] = None,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest a source into memory until it ends (Ctrl-C stops and keeps what is stored)."""
    settings = _settings(
        config, memory=memory, **{"perception.asr_model": asr_model, "redis.url": redis}
    )
    status = asyncio.run(_ingest(source, stream, settings, realtime))
    out.print(
        f"[green]stored[/] {status.snippets} snippets of stream [bold]{status.stream}[/] "
        f"({status.position:.1f} s) in {_where(settings)}"
        + (f", {status.drops} dropped" if status.drops else "")
    )


async def _ingest(source: str, stream: str | None, settings: Settings, realtime: bool) -> Any:
    from livesense.memory.watch import WatchHub
    from livesense.pipeline.manager import check_stream_id, stream_id_for
    from livesense.pipeline.perception import Perception
    from livesense.pipeline.stream_pipeline import StreamPipeline

    sid = check_stream_id(stream or stream_id_for(source))
    store = _open_store(settings.memory, settings, readonly=False, hub=WatchHub())
    perception = Perception.from_settings(settings)
    if settings.redis.url:  # one ingest per stream: wait for a dead holder's lease to expire
        try:
            await asyncio.to_thread(store.wait_for_lease, sid, lambda line: err.print(line))
        except BaseException:
            store.close()
            raise
    with err.status("loading models…"):
        await asyncio.to_thread(perception.load)
    pipeline = StreamPipeline(sid, source, settings, store, perception, realtime=realtime)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pipeline.stop)
    task = asyncio.create_task(pipeline.run())
    try:
        await _show_progress(pipeline, task)
        status = await task
    finally:
        store.close()
    if status.state == "error":
        raise LivesenseError(status.error or "Ingest failed.")
    return status


async def _show_progress(pipeline: Any, task: asyncio.Task[Any]) -> None:
    st = pipeline.status
    if not sys.stderr.isatty():
        await asyncio.wait({task})
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(st.stream, total=None, info="")
        while not task.done():
            total = st.duration if (st.duration and not st.live) else None
            info = f"{st.snippets} snippets"
            if st.live:
                info += f"  lag {st.lag:.1f} s  drops {st.drops}"
            progress.update(bar, total=total, completed=st.position, info=info)
            await asyncio.wait({task}, timeout=0.25)


def _print_hits(hits: list[Hit]) -> None:
    if not hits:
        out.print("nothing found")
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("stream", "time", "score", "evidence"):
        table.add_column(col)
    for h in hits:
        ev = h.evidence
        parts = []
        if ev.transcript:
            parts.append(f"said: “{ev.transcript}”")
        if ev.ocr:
            parts.append("shown: " + " | ".join(line.text for line in ev.ocr))
        if ev.events:
            parts.append("heard: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.events.items()))
        if ev.faces:
            parts.append(f"faces: {ev.faces}")
        table.add_row(h.stream, f"{h.start:.1f}–{h.end:.1f} s", f"{h.score:.3f}", "\n".join(parts))
    out.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    memory: MemoryOpt = None,
    stream: StreamOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=100, help="How many moments.")] = 5,
    start: Annotated[float | None, typer.Option("--start", help="From stream time (s).")] = None,
    end: Annotated[float | None, typer.Option("--end", help="Until stream time (s).")] = None,
    as_json: JsonOpt = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Find the moments that match a query (hybrid: meaning and exact words)."""
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    store = _open_store(settings.memory, settings, readonly=True)
    try:
        hits = store.search(query, stream=stream, start=start, end=end, top_k=top_k)
    finally:
        store.close()
    if as_json:
        print(json.dumps({"hits": [h.to_json() for h in hits]}))
    else:
        _print_hits(hits)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question about what was seen or heard.")],
    memory: MemoryOpt = None,
    stream: StreamOpt = None,
    as_json: JsonOpt = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Answer a question from the evidence of the best matching moments."""
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    store = _open_store(settings.memory, settings, readonly=True)
    try:
        answer: Answer = store.ask(question, stream=stream)
    finally:
        store.close()
    if as_json:
        print(json.dumps(answer.to_json()))
    else:
        out.print(f"[bold]{answer.text}[/]")
        _print_hits(answer.hits)


ServeHost = Annotated[
    str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")
]
ServePort = Annotated[int | None, typer.Option("--port", help="Port (default 8000).")]
ServeToken = Annotated[
    str | None, typer.Option("--token", help="Bearer token every endpoint but /healthz needs.")
]
ServeTokenFile = Annotated[
    Path | None, typer.Option("--token-file", help="File holding the admin token.")
]


@app.command()
def serve(
    memory: MemoryOpt = None,
    host: ServeHost = None,
    port: ServePort = None,
    token: ServeToken = None,
    token_file: ServeTokenFile = None,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the HTTP/WebSocket API and the web page over a memory (with --redis: stateless;
    streams started through it go to the workers)."""
    settings = _settings(
        config,
        service=True,
        memory=memory,
        **{"server.host": host, "server.port": port, "server.token": token},
        **{"redis.url": redis},
        **{"security.token_file": token_file},
    )
    asyncio.run(_serve(settings, source=None, stream=None, realtime=False))


@app.command()
def run(
    source: Annotated[str, typer.Argument(help="File path or URL to ingest while serving.")],
    memory: MemoryOpt = None,
    stream: StreamOpt = None,
    host: ServeHost = None,
    port: ServePort = None,
    token: ServeToken = None,
    token_file: ServeTokenFile = None,
    realtime: Annotated[
        bool, typer.Option("--realtime", help="Pace a file like a live source.")
    ] = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest a source and serve queries at once: the main job (with --redis: the source goes
    on the work list and this process is also a worker)."""
    settings = _settings(
        config,
        service=True,
        memory=memory,
        **{"server.host": host, "server.port": port, "server.token": token},
        **{"redis.url": redis},
        **{"security.token_file": token_file},
    )
    asyncio.run(_serve(settings, source=source, stream=stream, realtime=realtime))


async def _serve(
    settings: Settings, *, source: str | None, stream: str | None, realtime: bool
) -> None:

    from livesense.api.app import Services, create_app
    from livesense.api.auth import bind_host, read_token_file
    from livesense.api.server import Server, server_config
    from livesense.api.tokens import open_token_store
    from livesense.memory.watch import WatchHub
    from livesense.pipeline.manager import StreamManager
    from livesense.pipeline.perception import Perception

    hub = WatchHub()
    shared = settings.redis.url is not None
    store = _open_store(
        settings.memory, settings, readonly=shared and source is None, hub=hub, follow=shared
    )
    perception = Perception.from_settings(settings)
    manager = None if shared else StreamManager(settings, store, perception)
    work, worker, worker_task = None, None, None
    if shared:
        from livesense.memory.work_list import WorkList
        from livesense.pipeline.worker import Worker

        work = WorkList(settings.redis.url or "", settings.redis.prefix)
        if source is not None:  # this process is a worker too (and takes WHIP publishers)
            worker = Worker(settings, store, work, perception)
    admin_token = settings.server.token
    if admin_token is None and settings.security.token_file is not None:
        admin_token = read_token_file(settings.security.token_file)
    tokens = open_token_store(settings.memory, settings.redis.url, settings.redis.prefix)
    services = Services(
        store=store,
        manager=worker.manager if worker is not None else manager,
        hub=hub,
        token=admin_token,
        tokens=tokens,
        security=settings.security,
        work=work,
    )
    app_ = create_app(services)
    host, narrowed = bind_host(settings.server.host, admin_token)
    settings.server.host = host
    if narrowed:
        err.print(narrowed)
    elif admin_token is None:
        err.print("no admin token: anyone on this machine can use the API (loopback only)")
    if source is not None and work is not None and worker is not None:  # on the work list
        from livesense.pipeline.manager import check_stream_id, stream_id_for

        sid = check_stream_id(stream or stream_id_for(source))
        with contextlib.suppress(LivesenseError):  # already on the list: it runs on
            await work.start(source, sid, realtime=realtime)
        worker_task = asyncio.create_task(worker.run())
        err.print(f"ingesting {source} as stream {sid} (Redis work list)")
    elif source is not None and manager is not None:
        with err.status("loading models…"):
            await asyncio.to_thread(perception.load)
        pipeline = await manager.start(source, stream, realtime=realtime)
        await asyncio.sleep(0)
        err.print(f"ingesting {source} as stream {pipeline.stream}")
    drain = settings.resilience.drain_seconds
    config = server_config(
        app_,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=2,  # open requests get 2 s; then streams drain (`drain` s)
    )
    server = Server(config)
    err.print(
        f"serving on http://{settings.server.host}:{settings.server.port} (API docs at /docs)"
    )
    try:
        await server.serve()
    finally:
        if manager is not None:
            await manager.close(timeout=drain)  # SIGTERM: streams drain and flush, then exit
        if worker is not None and worker_task is not None:
            worker.stop()
            await worker_task
        if work is not None:
            await work.close()
        tokens.close()
        store.close()


def _where(settings: Settings) -> str:
    if settings.redis.url:
        from livesense.memory.redis_store import shown_url

        return shown_url(settings.redis.url)
    return str(settings.memory)


@app.command()
def timeline(
    stream: Annotated[str, typer.Option("--stream", help="Stream id.")],
    memory: MemoryOpt = None,
    redis: RedisOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The stream's stored moments in time order (recent, key and consolidated tiers)."""
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    store = _open_store(settings.memory, settings, readonly=True)
    try:
        moments = store.timeline(stream)
        summary = store.summary(stream)
    finally:
        store.close()
    if as_json:
        print(json.dumps({"moments": [m.to_json() for m in moments]}))
        return
    if summary is not None:
        out.print(summary.text())
    table = Table(show_header=True, header_style="bold")
    for col in ("time", "tier", "summary"):
        table.add_column(col)
    for m in moments:
        table.add_row(f"{m.start:.1f}–{m.end:.1f} s", m.tier, m.summary)
    out.print(table if moments else f"stream {stream} has no stored moments")


@app.command()
def worker(
    redis: Annotated[str, typer.Option("--redis", help="Redis URL of the shared memory.")],
    streams: Annotated[
        int | None, typer.Option("--streams", min=1, help="Streams this worker runs at most.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest streams from the Redis work list (start them through any API process)."""
    settings = _settings(
        config, service=True, **{"redis.url": redis, "redis.worker_streams": streams}
    )
    asyncio.run(_worker(settings))


async def _worker(settings: Settings) -> None:
    from livesense.memory.work_list import WorkList
    from livesense.pipeline.perception import Perception
    from livesense.pipeline.worker import Worker

    store = _open_store(settings.memory, settings, readonly=False)
    work = WorkList(settings.redis.url or "", settings.redis.prefix)
    worker_ = Worker(settings, store, work, Perception.from_settings(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker_.stop)
    err.print(f"worker {worker_.id} on {_where(settings)}")
    try:
        await worker_.run()
    finally:
        await work.close()
        store.close()


def main() -> None:
    """Entry point: errors become one sentence on stderr and a non-zero exit."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except LivesenseError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        cause = first_error(e)
        if isinstance(cause, LivesenseError):
            err.print(f"[red]error:[/] {escape(str(cause))}", highlight=False)
        else:
            err.print(
                f"[red]error:[/] {cause.__class__.__name__}: {escape(str(cause))}", highlight=False
            )
        sys.exit(1)


if __name__ == "__main__":
    main()
