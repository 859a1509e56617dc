"""The HTTP and WebSocket API (FastAPI; OpenAPI at /docs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from livesense import __version__
from livesense.api.auth import Authenticator, OpenGrants, Principal, bearer_token
from livesense.api.docs import add_docs
from livesense.api.limits import RequestLimits, rate_limiter_for
from livesense.api.tokens import Scope
from livesense.api.whip import whip_router
from livesense.config import SecuritySettings
from livesense.errors import LivesenseError, NotFoundError, QueryError, SourceError
from livesense.pipeline import metrics
from livesense.pipeline.manager import check_stream_id, plan_start, stream_id_for
from livesense.records import Hit
from livesense.service import Services
from livesense.stream.source import check_source_url

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("livesense.api")


class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, max_length=1000)
    stream: str | None = Field(None, max_length=64)


class StartStream(BaseModel):
    url: str = Field(..., min_length=1, max_length=4096)
    stream: str | None = Field(None, max_length=64)
    realtime: bool = False
    append: bool = Field(
        False,
        description="The stream already holds moments: put this recording after them (a gap "
        "marks the seam). Without it a recording for such a stream is refused (409).",
    )


def caller(request: Request) -> Principal:
    """The request's Principal (401 without a valid token when one is configured)."""
    authn: Authenticator = request.app.state.auth
    client = request.client.host if request.client else None
    return authn.from_header(request.headers.get("authorization"), client)


Caller = Annotated[Principal, Depends(caller)]


async def refuse_socket(ws: WebSocket, e: LivesenseError) -> None:
    """Refuse a WebSocket before it opens as HTTP does: the status (400, 401, 403, 429) with
    a JSON sentence and its headers (Retry-After, WWW-Authenticate); a server without the
    denial-response extension gets a close with the sentence as its reason."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = getattr(e, "headers", None)
        await ws.send_denial_response(
            JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)
        )
        return
    await ws.close(code=1013 if e.status == 429 else 1008, reason=str(e)[:120])


def hit_json(hit: Hit) -> dict[str, Any]:
    """A hit as the API shows it: keyframes become URLs under /v1/keyframes."""
    out = hit.to_json()
    ref = out["evidence"].get("keyframe")
    if ref:
        out["evidence"]["keyframe"] = f"/v1/keyframes/{ref}"
    return out


def create_app(services: Services) -> FastAPI:
    """The service's app around already-open memory, manager and watch hub."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await grants.close()
        if services.manager is not None:
            await services.manager.close()

    app = FastAPI(
        title="livesense", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    add_docs(app)  # Swagger UI from local files: /docs works offline
    app.state.services = services
    security = services.security or SecuritySettings()
    limiter = rate_limiter_for(services.store, security)  # shared through Redis if there
    authn = Authenticator(services.token, services.tokens, security, limiter=limiter)
    app.state.auth = authn
    grants = OpenGrants(authn, security.revocation_seconds / 2)  # checked twice per promise
    app.state.grants = grants
    app.add_middleware(RequestLimits, settings=security)

    @app.exception_handler(LivesenseError)
    async def on_error(request: Request, exc: LivesenseError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": f"The service failed on this request ({exc.__class__.__name__})."},
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        reason = first.get("msg", "invalid request")
        return JSONResponse({"error": f"Invalid {where or 'request'}: {reason}."}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # a body cut short (408) or too large (413) was not read to its end: the connection
        # cannot carry another request
        unread = {"Connection": "close"} if exc.status_code in (408, 413) else None
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=unread)

    def source_status() -> dict[str, Any] | None:
        """The state of the source `livesense run` ingests, if this process has one."""
        sid = services.source
        if sid is None:
            return None
        pipeline = services.manager.pipelines.get(sid) if services.manager else None
        if pipeline is not None:
            return pipeline.status.to_json()
        if services.work is not None:
            with contextlib.suppress(LivesenseError):
                return anyio.from_thread.run(services.work.status, sid)
        return None

    @app.get("/healthz", tags=["service"])
    def healthz() -> JSONResponse:
        """200 while the service works; 503 once the source of `livesense run` has failed
        (queries are still answered)."""
        running = services.manager.running() if services.manager else []
        out: dict[str, Any] = {"status": "ok", "version": __version__, "running": len(running)}
        if not authn.enabled:  # stream names are for token holders only
            out["streams"] = running
        if (path := getattr(services.store, "vector_search", None)) is not None:
            out["vector_search"] = path
        source = source_status()
        if source is not None:
            state = str(source.get("state"))
            shown: dict[str, Any] = {"state": state}
            if not authn.enabled:
                shown.update(stream=source.get("stream"), error=source.get("error"))
            out["source"] = shown
            if state == "error":
                out["status"] = "error"
        return JSONResponse(out, status_code=503 if out["status"] == "error" else 200)

    @app.get("/metrics", tags=["service"])
    def prometheus(who: Caller) -> Response:
        who.require_admin()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/search", tags=["query"])
    def search(
        who: Caller,
        q: Annotated[str, Query(min_length=1, max_length=1000)],
        stream: Annotated[str | None, Query(max_length=64)] = None,
        top_k: Annotated[int, Query(ge=1, le=100)] = 5,
        start: Annotated[float | None, Query(ge=0)] = None,
        end: Annotated[float | None, Query(ge=0)] = None,
    ) -> dict[str, Any]:
        if stream is not None:
            check_stream_id(stream)
        stream = who.narrow(stream)
        authn.limit(who, "searches")
        t0 = time.perf_counter()
        services.store.refresh()
        hits = services.store.search(q, stream=stream, start=start, end=end, top_k=top_k)
        metrics.QUERY_SECONDS.labels("search").observe(time.perf_counter() - t0)
        return {"hits": [hit_json(h) for h in hits]}

    @app.post("/v1/ask", tags=["query"])
    def ask(body: AskRequest, who: Caller) -> dict[str, Any]:
        if body.stream is not None:
            check_stream_id(body.stream)
        stream = who.narrow(body.stream)
        authn.limit(who, "questions")
        t0 = time.perf_counter()
        services.store.refresh()
        answer = services.store.ask(body.question, stream=stream)
        metrics.QUERY_SECONDS.labels("ask").observe(time.perf_counter() - t0)
        return {"answer": answer.text, "hits": [hit_json(h) for h in answer.hits]}

    @app.get("/v1/streams", tags=["streams"])
    def list_streams(who: Caller) -> dict[str, Any]:
        services.store.refresh()
        statuses = services.manager.statuses() if services.manager else []
        live = {s.stream: s.to_json() for s in statuses}
        if services.work is not None:
            live.update(anyio.from_thread.run(services.work.statuses))
        out = []
        for info in services.store.streams():
            status = live.pop(info["stream"], None)
            out.append({**info, "ingest": status})
        for status in live.values():
            out.append({"stream": status["stream"], "records": 0, "ingest": status})
        return {"streams": [s for s in out if who.sees(s["stream"])]}

    @app.post("/v1/streams", tags=["streams"], status_code=201)
    async def start_stream(body: StartStream, who: Caller) -> dict[str, Any]:
        """Start ingesting a URL or a file of the server's. A refused request (a source that
        cannot be opened, a recording for a stream that holds moments without `append`)
        leaves nothing behind."""
        who.require_admin()  # opening URLs and files of the server's choosing: admin only
        check_source_url(body.url)
        sid = check_stream_id(body.stream or stream_id_for(body.url))
        if services.work is None and services.manager is None:
            raise LivesenseError("This process only answers queries; it ingests no streams.")
        if services.manager is not None and sid in services.manager.running():
            raise QueryError(f"Stream {sid} is already being ingested; stop it first.")
        base = await asyncio.to_thread(
            plan_start, services.store, sid, body.url, append=body.append, via="api"
        )
        if services.work is not None:  # a worker takes it from the Redis work list
            return await services.work.start(
                body.url, sid, realtime=body.realtime, append=body.append, base=base
            )
        assert services.manager is not None
        manager = services.manager
        pipeline = await manager.start(
            body.url, sid, realtime=body.realtime, append=body.append
        )
        # Give the source a moment to open so a bad URL is answered here, not later.
        for _ in range(100):
            if pipeline.status.state != "starting":
                break
            await asyncio.sleep(0.05)
        if pipeline.status.state == "error":
            await asyncio.wait({manager.tasks[sid]}, timeout=5)
            manager.withdraw(pipeline)
            if pipeline.failure is not None:
                raise pipeline.failure
            raise SourceError(pipeline.status.error or "The source could not be opened.")
        return pipeline.status.to_json()

    @app.delete("/v1/streams/{stream}", tags=["streams"])
    async def stop_stream(
        stream: str,
        who: Caller,
        data: Annotated[
            bool,
            Query(
                description="Also delete the stream's stored moments, keyframes and gap "
                "markers (admin token only); the stream is stopped first if it runs."
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Stop ingesting a stream; its entry leaves the list (its stored moments stay, unless
        `data` is true)."""
        check_stream_id(stream)
        if data:
            who.require_admin()
        else:
            who.require(Scope.ADMIN, stream)
        status: dict[str, Any] | None = None
        try:
            if services.work is not None:
                status = await services.work.stop(stream)
            elif services.manager is not None:
                status = (await services.manager.stop(stream)).to_json()
                services.manager.forget(stream)
            else:
                raise NotFoundError(f"Stream {stream} is not being ingested.")
        except NotFoundError:
            if not data:
                raise
        if not data:
            assert status is not None
            return status
        if services.work is not None and status is not None:
            await services.work.wait_released(stream, services.store)
        deleted = await asyncio.to_thread(services.store.delete_stream, stream)
        if services.work is not None:
            await services.work.forget(stream)
        if status is None and not any(deleted.values()):
            raise NotFoundError(f"Stream {stream} has no stored moments and is not ingested.")
        return {"stream": stream, "ingest": status, "deleted": deleted}

    @app.get("/v1/keyframes/{stream}/{name}", tags=["query"])
    def keyframe(stream: str, name: str, who: Caller) -> Response:
        check_stream_id(stream)
        who.require(Scope.READ, stream)
        index = name.removesuffix(".jpg")
        if not (index.isascii() and index.isdigit()) or len(index) > 12:
            raise NotFoundError(f"No keyframe named {name[:40]!r}.")
        path = services.store.keyframe_path(stream, int(index))
        if path is not None and path.is_file():
            return FileResponse(path, media_type="image/jpeg")
        data = services.store.keyframe(stream, int(index))  # stores without files (Redis)
        if data is None:
            raise NotFoundError(f"Stream {stream} has no keyframe {index}.")
        return Response(data, media_type="image/jpeg")

    @app.websocket("/v1/watch")
    async def watch(ws: WebSocket) -> None:
        q = ws.query_params.get("q", "").strip()
        stream = ws.query_params.get("stream") or None
        # 'Authorization: Bearer <token>' (any other scheme is no token), or ?token= for
        # browsers, which cannot set headers on a WebSocket
        given = bearer_token(ws.headers.get("authorization")) or ws.query_params.get("token", "")
        try:
            # token lookups and shared rate limits may ask Redis: not on the event loop
            host = ws.client.host if ws.client else None
            who = await asyncio.to_thread(authn.principal, given, host)
            if not q or len(q) > 1000:
                raise QueryError("A watch needs a query 'q' of 1 to 1000 characters.")
            if stream is not None:
                check_stream_id(stream)
            stream = who.narrow(stream)
            await asyncio.to_thread(authn.limit, who, "watches")
        except LivesenseError as e:
            await refuse_socket(ws, e)
            return
        await ws.accept()

        async def revoked() -> None:
            await ws.close(code=1008, reason="The token of this watch was revoked.")

        grant = grants.hold(who, given, revoked)
        sub = await asyncio.to_thread(services.hub.subscribe, q, stream=stream)
        try:
            await ws.send_json({"watching": {"q": q, "stream": stream}})
            receiver = asyncio.create_task(ws.receive_text())
            while True:
                getter = asyncio.create_task(sub.queue.get())
                done, _ = await asyncio.wait(
                    {getter, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if receiver in done:
                    getter.cancel()
                    receiver.result()  # raises WebSocketDisconnect when the client leaves
                    receiver = asyncio.create_task(ws.receive_text())
                    continue
                await ws.send_json({"hit": hit_json(getter.result())})
        except (WebSocketDisconnect, RuntimeError):  # gone, or closed by a revocation
            pass
        finally:
            grants.release(grant)
            services.hub.unsubscribe(sub)
            for task in (locals().get("receiver"), locals().get("getter")):
                if isinstance(task, asyncio.Task):
                    task.cancel()

    app.include_router(whip_router(services))  # before the page, which is mounted at /
    if STATIC.is_dir() and (STATIC / "index.html").exists():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")

    return app
