"""The `livesense` command: ingest, search, ask, serve, run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from livesense import __version__
from livesense.api.token_cli import token_app
from livesense.config import Settings, load_settings
from livesense.engines.cli import bench_app, engines_app
from livesense.errors import LivesenseError, first_error
from livesense.memory.answer import compose_answer
from livesense.records import Answer, Hit
from livesense.service import build_services, open_store, open_work_list
from livesense.urls import shown_url

if TYPE_CHECKING:
    from livesense.memory.store_base import Store

app = typer.Typer(
    name="livesense",
    help="Streaming perception: ingest live or recorded audio/video, then search and ask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _flags_take_no_value() -> None:
    """Typer's rich help prints a flag's type ("<bool>") in the value column, as if the flag
    took a value; a flag takes none, so its column stays empty."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # a typer that prints no type column has nothing to hide
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    setattr(TyperOption, "display_type_rich", display_type_rich)  # noqa: B010


_flags_take_no_value()


def _version(value: bool) -> None:
    if value:
        print(f"livesense {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Streaming perception: ingest live or recorded audio/video, then search and ask."""


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
AppendOpt = Annotated[
    bool,
    typer.Option(
        "--append",
        help="The stream already holds moments: put this recording after them (a gap marks "
        "the seam). Without it such a stream id is refused.",
    ),
]
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
    append: AppendOpt = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest a source into memory until it ends (Ctrl-C stops and keeps what is stored)."""
    settings = _settings(
        config, memory=memory, **{"perception.asr_model": asr_model, "redis.url": redis}
    )
    pipeline = asyncio.run(_ingest(source, stream, settings, realtime, append))
    status = pipeline.status
    first = (pipeline.base or 0) * settings.snippet.seconds
    span = f"{status.position:.1f} s"
    if first:  # appended: its span on the stream's clock
        span = f"{first:.1f}–{span}, after the moments stored before"
    out.print(
        f"[green]stored[/] {status.snippets} snippets of stream [bold]{status.stream}[/] "
        f"({span}) in {_where(settings)}"
        + (f", {status.drops} dropped" if status.drops else "")
    )


async def _ingest(
    source: str, stream: str | None, settings: Settings, realtime: bool, append: bool
) -> Any:
    from livesense.memory.watch import WatchHub
    from livesense.pipeline.manager import check_stream_id, plan_start, stream_id_for
    from livesense.pipeline.stream_pipeline import StreamPipeline
    from livesense.stream.source import check_source_url

    check_source_url(source)
    sid = check_stream_id(stream or stream_id_for(source))
    store = open_store(settings, readonly=False, hub=WatchHub())
    resumed = False  # taken over from an ingest of this stream that died: carry on with it
    try:
        if settings.redis.url:  # one ingest per stream: wait for a dead holder's lease
            from livesense.memory.redis_store import RedisStore

            assert isinstance(store, RedisStore)
            resumed = await asyncio.to_thread(
                store.wait_for_lease, sid, lambda line: err.print(line)
            )
        if not resumed:
            plan_start(store, sid, source, append=append, via="cli")
    except BaseException:
        store.close()
        raise
    perception = build_services(settings, store, ingest=False).perception
    assert perception is not None
    with err.status("loading models…"):
        await asyncio.to_thread(perception.load)
    pipeline = StreamPipeline(
        sid, source, settings, store, perception, realtime=realtime, append=append,
        base=0 if resumed else None,  # from 0: what the dead ingest stored is skipped
    )  # fmt: skip
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
        raise LivesenseError(_failed(status))
    return pipeline


def _failed(status: Any) -> str:
    """Why a stream failed, and what of it is kept."""
    why = status.error or f"Ingesting stream {status.stream} failed."
    if status.snippets:
        why += (
            f" The {status.snippets} snippets stored before that (up to "
            f"{status.position:.1f} s) are kept."
        )
    return str(why)


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


def _read_only(config: Path | None, memory: Path | None, redis: str | None) -> Store:
    """The memory a read command opens, read-only: the directory or Redis its flags name."""
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    return open_store(settings, readonly=True)


def _nothing(query: str, stream: str | None) -> str:
    """The one sentence that says no stored moment matches (as `ask` answers it)."""
    return compose_answer(query, [], stream=stream).text


def _print_hits(hits: list[Hit]) -> None:
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
    with _read_only(config, memory, redis) as store:
        hits = store.search(query, stream=stream, start=start, end=end, top_k=top_k)
    if as_json:
        print(json.dumps({"hits": [h.to_json() for h in hits]}))
    elif hits:
        _print_hits(hits)
    else:
        out.print(_nothing(query, stream), markup=False, highlight=False)


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
    with _read_only(config, memory, redis) as store:
        answer: Answer = store.ask(question, stream=stream)
    if as_json:
        print(json.dumps(answer.to_json()))
    else:
        out.print(f"[bold]{escape(answer.text)}[/]")
        if answer.hits:
            _print_hits(answer.hits)


ServeHost = Annotated[
    str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1).")
]
ServePort = Annotated[int | None, typer.Option("--port", help="Port (default 8000).")]
ServeToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Admin bearer token (8+ characters) every data endpoint needs. It shows in the "
        "process list: prefer --token-file or LIVESENSE_SERVER__TOKEN.",
    ),
]
ServeTokenFile = Annotated[
    Path | None,
    typer.Option("--token-file", help="File holding the admin token (first line, 8+ characters)."),
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
    append: AppendOpt = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Ingest a source and serve queries at once: the main job (with --redis: the source goes
    on the work list and this process is also a worker). A source that cannot be opened ends
    it; one that ends or fails later is reported, and /healthz shows its state."""
    settings = _settings(
        config,
        service=True,
        memory=memory,
        **{"server.host": host, "server.port": port, "server.token": token},
        **{"redis.url": redis},
        **{"security.token_file": token_file},
    )
    asyncio.run(
        _serve(settings, source=source, stream=stream, realtime=realtime, append=append)
    )


async def _serve(
    settings: Settings,
    *,
    source: str | None,
    stream: str | None,
    realtime: bool,
    append: bool = False,
) -> None:
    from livesense.api.auth import bind_host, check_admin_token, read_token_file
    from livesense.api.server import listen
    from livesense.memory.store import WriterBusyError
    from livesense.memory.watch import WatchHub
    from livesense.pipeline.manager import check_stream_id, stream_id_for
    from livesense.stream.source import check_source_url

    sid = None
    if source is not None:
        check_source_url(source)
        sid = check_stream_id(stream or stream_id_for(source))
    admin_token = settings.server.token
    if admin_token is not None:
        admin_token = check_admin_token(admin_token)
    elif settings.security.token_file is not None:
        admin_token = read_token_file(settings.security.token_file)
    host, narrowed = bind_host(settings.server.host, admin_token)
    settings.server.host = host
    sock = listen(host, settings.server.port)  # a port that cannot be had ends it here
    hub = WatchHub()
    shared = settings.redis.url is not None
    busy = False
    try:
        try:
            store = open_store(
                settings, readonly=shared and source is None, hub=hub, follow=shared
            )
        except WriterBusyError:
            if source is not None:
                raise
            # Another process (an ingest) writes this memory: serve it read-only meanwhile.
            store = open_store(settings, readonly=True, hub=hub)
            busy = True
            err.print(
                f"another process is writing to the memory in {settings.memory}: serving it "
                "read-only (queries see what it stores; to start streams here, stop that "
                "process and use 'livesense run' or POST /v1/streams)",
                markup=False,
                highlight=False,
            )
    except BaseException:
        sock.close()
        raise
    closing = contextlib.ExitStack()
    closing.callback(store.close)
    closing.callback(sock.close)
    with closing:
        await _serve_on(
            settings, store, hub, sock, admin_token, narrowed,
            source=source, sid=sid, realtime=realtime, append=append, busy=busy,
        )  # fmt: skip


async def _serve_on(
    settings: Settings,
    store: Any,
    hub: Any,
    sock: Any,
    admin_token: str | None,
    narrowed: str | None,
    *,
    source: str | None,
    sid: str | None,
    realtime: bool,
    append: bool,
    busy: bool = False,
) -> None:
    """Serve on a bound socket over an open store: start the source (when given) first;
    `busy`: another process writes the memory, so this one only reads it."""

    from livesense.api.app import create_app
    from livesense.api.server import ConnectionGuard, Server, server_config
    from livesense.pipeline.manager import plan_start

    shared = settings.redis.url is not None
    work, worker_task, watcher = None, None, None
    base = None
    listed = False  # the stream is on the Redis work list already: it runs on as it is
    if shared:
        work = open_work_list(settings)
        if sid is not None:
            listed = bool((await work.specs()).get(sid, {}).get("wanted"))
    if source is not None and sid is not None and not listed:
        base = await asyncio.to_thread(plan_start, store, sid, source, append=append, via="cli")
    # shared: this process is a worker too when it ingests a source (and takes WHIP publishers)
    services = build_services(
        settings, store, hub, ingest=(source is not None) if shared else not busy, work=work,
        token=admin_token, tokens=True, source=sid,
    )  # fmt: skip
    assert services.perception is not None and services.tokens is not None
    perception, tokens, worker = services.perception, services.tokens, services.worker
    manager = None if shared else services.manager
    app_ = create_app(services)
    if narrowed:
        err.print(narrowed)
    elif admin_token is None:
        err.print("no admin token: anyone on this machine can use the API (loopback only)")
    try:
        if source is not None and sid is not None and work is not None and worker is not None:
            with contextlib.suppress(LivesenseError):  # already on the list: it runs on
                await work.start(source, sid, realtime=realtime, append=append, base=base)
            worker_task = asyncio.create_task(worker.run())
            err.print(f"ingesting {shown_url(source)} as stream {sid} (Redis work list)")
            watcher = asyncio.create_task(_report_listed(work, sid))
        elif source is not None and sid is not None and manager is not None:
            with err.status("loading models…"):
                await asyncio.to_thread(perception.load)
            pipeline = await manager.start(source, sid, realtime=realtime, append=append)
            while pipeline.status.state == "starting":  # opening: a bad source ends it here
                await asyncio.wait({manager.tasks[sid]}, timeout=0.05)
            if pipeline.status.state == "error" and not pipeline.opened:
                raise LivesenseError(_failed(pipeline.status))
            err.print(f"ingesting {shown_url(source)} as stream {pipeline.stream}")
            watcher = asyncio.create_task(_report_end(manager.tasks[sid]))
        config = server_config(
            app_,
            ConnectionGuard(settings.security),  # slow headers, many sockets
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=2,  # open requests get 2 s; then streams drain (`drain` s)
        )
        server = Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.05)
        if server.started:
            err.print(
                f"serving on http://{_shown_host(settings.server.host)}:{sock.getsockname()[1]}"
                " (API docs at /docs)"
            )
        await serving
    finally:
        if watcher is not None:
            watcher.cancel()
        if manager is not None:
            # SIGTERM: streams drain and flush, then the process exits
            await manager.close(timeout=settings.resilience.drain_seconds)
        if worker is not None and worker_task is not None:
            worker.stop()
            await worker_task
        if work is not None:
            await work.close()
        tokens.close()


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _report_end(task: asyncio.Task[Any]) -> None:
    """Say on stderr when the source of `run` ends or fails (the server goes on)."""
    status = await asyncio.shield(task)
    if status.state == "error":
        err.print(f"[red]source failed:[/] {escape(_failed(status))} Still serving queries.")
    else:
        err.print(
            f"source ended ({status.state}): stream {status.stream} stored {status.snippets} "
            f"snippets ({status.position:.1f} s). Still serving queries."
        )


async def _report_listed(work: Any, sid: str) -> None:
    """`run` with a Redis work list: say when the stream ends or fails, as reported there."""
    while True:
        await asyncio.sleep(1.0)
        with contextlib.suppress(LivesenseError):
            status = await work.status(sid)
            if status and status.get("state") in ("done", "error", "stopped"):
                if status["state"] == "error":
                    why = escape(str(status.get("error") or "it failed"))
                    err.print(f"[red]source failed:[/] {why} Still serving queries.")
                else:
                    err.print(f"source ended ({status['state']}). Still serving queries.")
                return


def _where(settings: Settings) -> str:
    if settings.redis.url:
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
    with _read_only(config, memory, redis) as store:
        moments = store.timeline(stream)
        summary = store.summary(stream)
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


streams_app = typer.Typer(
    help="List the streams in memory (with --json: as JSON), or delete one with its data.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(streams_app, name="streams")


@streams_app.callback()
def streams(
    ctx: typer.Context,
    memory: MemoryOpt = Path("livesense-memory"),
    as_json: JsonOpt = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List the streams in memory: stored moments, the stream time they span, and (with
    --redis) what the work list says of their ingest."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    rows = asyncio.run(_list_streams(settings))
    if as_json:
        print(json.dumps({"streams": rows}))
        return
    if not rows:
        out.print(f"no streams in {_where(settings)}")
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("stream", "moments", "span", "ingest"):
        table.add_column(col)
    for row in rows:
        span = f"{row['start']:.1f}–{row['end']:.1f} s" if row["records"] else "–"
        ingest = row["ingest"] or {}
        state = str(ingest.get("state") or "")
        if ingest.get("error"):
            state += f": {ingest['error']}"
        table.add_row(row["stream"], str(row["records"]), span, escape(state))
    out.print(table)


async def _list_streams(settings: Settings) -> list[dict[str, Any]]:
    store = open_store(settings, readonly=True)
    try:
        rows = [{**info, "ingest": None} for info in store.streams()]
    finally:
        store.close()
    if settings.redis.url:
        from livesense.memory.work_list import WorkList

        work = WorkList(settings.redis.url, settings.redis.prefix)
        try:
            listed = await work.statuses()
        finally:
            await work.close()
        for row in rows:
            row["ingest"] = listed.pop(row["stream"], None)
        rows += [
            {"stream": sid, "records": 0, "start": 0.0, "end": 0.0, "snippets": 0, "ingest": st}
            for sid, st in sorted(listed.items())
        ]
    return rows


@streams_app.command("delete")
def streams_delete(
    stream: Annotated[str, typer.Argument(help="The stream id to delete.")],
    memory: MemoryOpt = Path("livesense-memory"),
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete a stream and everything stored of it: moments (with their vectors and text
    index), keyframes, summary and gap markers. It cannot be undone."""
    from livesense.pipeline.manager import check_stream_id

    check_stream_id(stream)
    settings = _settings(config, memory=memory, **{"redis.url": redis})
    if not settings.redis.url and not (settings.memory / "memory.db").exists():
        raise LivesenseError(f"There is no livesense memory in {settings.memory}.")
    try:
        store = open_store(settings, readonly=False)
    except LivesenseError as e:
        if "already writing" not in str(e):
            raise
        raise LivesenseError(
            f"{e} While a server runs on it, delete through it: "
            f"DELETE /v1/streams/{stream}?data=true."
        ) from None
    try:
        held = store.count(stream)
        if not yes:
            question = f"Delete stream {stream} and its {held} stored moments for good?"
            if not sys.stdin.isatty():
                raise LivesenseError(
                    f"Deleting stream {stream} and its {held} stored moments cannot be undone; "
                    "add --yes to confirm."
                )
            if not typer.confirm(question):
                raise typer.Exit(1)
        deleted = store.delete_stream(stream)
    finally:
        store.close()
    if not any(deleted.values()):
        raise LivesenseError(f"There is no stream {stream} in {_where(settings)}.")
    out.print(
        f"[green]deleted[/] stream [bold]{stream}[/]: {deleted['moments']} moments, "
        f"{deleted['keyframes']} keyframes, {deleted['gaps']} gap markers"
    )


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
    store = open_store(settings, readonly=False)
    work = open_work_list(settings)
    worker_ = build_services(settings, store, work=work).worker
    assert worker_ is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker_.stop)
    err.print(f"worker {worker_.id} on {_where(settings)}")
    try:
        await worker_.run()
    finally:
        await work.close()
        store.close()


def usage_sentence(e: Exception) -> str:
    """One sentence for a command-line usage error, naming the option or argument at fault
    and where help is (the parser's own text starts with its class name or "Usage:")."""
    ctx = getattr(e, "ctx", None)
    where = f"livesense {ctx.command_path.partition(' ')[2]}".strip() if ctx else "livesense"
    param = getattr(e, "param", None)
    name = getattr(e, "option_name", None)
    message = str(getattr(e, "message", "") or e).strip().rstrip(".")
    if param is not None:
        opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
        label = " / ".join(opts) if opts else str(getattr(param, "name", "")).upper()
        if type(e).__name__ == "MissingParameter":
            text = f"{where} needs {label}"
        else:
            text = f"Invalid value for {label}: {message[:1].lower()}{message[1:]}"
    elif type(e).__name__ == "NoSuchOption" and name:
        possible = sorted(getattr(e, "possibilities", None) or [])
        text = f"{where} has no option {name}"
        if possible:
            text += f" (did you mean {' or '.join(possible)}?)"
    else:
        text = message or "The command line could not be read"
    return f"{text}; see '{where} --help'."


def main() -> None:
    """Entry point: errors become one sentence on stderr and a non-zero exit."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(prog_name="livesense", standalone_mode=False)
    except LivesenseError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except (typer.Exit, typer.Abort) as e:
        sys.exit(getattr(e, "exit_code", 130 if isinstance(e, typer.Abort) else 0))
    except typer.TyperException as e:  # the command line's usage errors (typer's click)
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # help was printed
        err.print(f"[red]error:[/] {escape(usage_sentence(e))}", highlight=False)
        sys.exit(int(getattr(e, "exit_code", 2)))
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            err.print(f"[red]error:[/] {escape(usage_sentence(e))}", highlight=False)
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
