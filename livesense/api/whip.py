"""WHIP (RFC 9725) ingestion endpoints, and the recent-moments timeline the web page shows.

POST /whip/{stream} with an SDP offer starts a publisher session (201, SDP answer, Location);
PATCH on the session adds trickled ICE candidates (ICE restarts: 422); DELETE ends it and the
stream's memory stays. OPTIONS answers CORS preflight so pages on other origins can publish.
A new session for a stream that is already published replaces the old one, and a reconnect
continues the stream's timeline after a marked gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from livesense.api.auth import Authenticator, OpenGrants, Principal, bearer_token
from livesense.api.tokens import Scope
from livesense.config import Settings, WebRTCSettings
from livesense.errors import LivesenseError, NotFoundError, SourceError
from livesense.pipeline.manager import check_stream_id
from livesense.records import SnippetRecord
from livesense.stream.webrtc import Timeline, WebRTCSource

if TYPE_CHECKING:
    from livesense.memory.store_base import Store
    from livesense.service import Services

log = logging.getLogger("livesense.whip")

MAX_SDP_BYTES = 256 * 1024
UNUSABLE_OFFER = (
    "The SDP offer could not be used: it is malformed or asks for something this service does "
    "not support."
)
REPLACE_TIMEOUT = 20.0  # s a replaced session's stream may take to flush before the new one
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "86400",
}


@dataclass
class WhipSession:
    """One publisher: its id, stream, source (owning the peer connection) and entity tag."""

    id: str
    stream: str
    source: WebRTCSource
    etag: str
    started: float
    grant: int | None = None  # the publisher's token, watched for revocation (OpenGrants)
    grants: OpenGrants | None = None

    def release(self) -> None:
        if self.grants is not None:
            self.grants.release(self.grant)
            self.grant = None

    @property
    def location(self) -> str:
        return f"/whip/{self.stream}/{self.id}"


class WhipSessions:
    """The live WHIP sessions of this process and the timelines of the streams they fed."""

    def __init__(self, services: Services, settings: Settings) -> None:
        self.services = services
        self.settings = settings
        self.webrtc: WebRTCSettings = settings.webrtc
        self.sessions: dict[str, WhipSession] = {}
        self.timelines: dict[str, Timeline] = {}
        self.reserved = 0  # sessions being set up
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def active(self) -> int:
        return len(self.sessions) + self.reserved

    def by_stream(self, stream: str) -> WhipSession | None:
        return next((s for s in self.sessions.values() if s.stream == stream), None)

    def lock(self, stream: str) -> asyncio.Lock:
        return self._locks.setdefault(stream, asyncio.Lock())

    def timeline(self, stream: str) -> Timeline:
        """The stream's timeline: this process's, or continued from what memory holds."""
        found = self.timelines.get(stream)
        if found is not None:
            return found
        now = time.time()
        timeline = Timeline(anchor=now)
        with contextlib.suppress(LivesenseError, sqlite3.Error):
            self.services.store.refresh()
            info = next((s for s in self.services.store.streams() if s["stream"] == stream), None)
            if info is not None and info["end"] > 0:
                end = float(info["end"])
                last = _recent(self.services.store, stream, 1)
                if last and last[0].wall is not None:  # keep the wall clock the stream had
                    timeline = Timeline(anchor=last[0].wall - last[0].start, end=end)
                else:  # a file, or no wall clock: continue right after its end
                    timeline = Timeline(anchor=now - end, end=end)
        self.timelines[stream] = timeline
        return timeline

    def watch(self, session: WhipSession) -> None:
        """Forget the session once its source has ended (publisher gone, idle, stopped)."""

        async def wait_end() -> None:
            await session.source.ended.wait()
            session.release()
            if self.sessions.get(session.id) is session:
                del self.sessions[session.id]
            log.info("WHIP session %s of stream %s ended", session.id, session.stream)

        task = asyncio.get_running_loop().create_task(wait_end(), name=f"whip-{session.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def end(self, session: WhipSession) -> None:
        session.release()
        self.sessions.pop(session.id, None)
        await session.source.aclose()

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self.end(session)
        for task in list(self._tasks):
            task.cancel()


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**CORS, **headers})


def _caller(request: Request, services: Services) -> Principal:
    """Who sent the request (AuthError, or RateLimited after many wrong tokens)."""
    authn = getattr(request.app.state, "auth", None)
    if not isinstance(authn, Authenticator):
        authn = Authenticator(services.token)
    client = request.client.host if request.client else None
    return authn.from_header(request.headers.get("authorization"), client)


def _denied(request: Request, services: Services, action: Scope, stream: str) -> Response | None:
    """None when the request's token may `action` on `stream`, else the 401/403/429 answer."""
    try:
        _caller(request, services).require(action, stream)
    except LivesenseError as e:
        return _error(e.status, str(e), **getattr(e, "headers", {}))
    return None


def _link_header(settings: WebRTCSettings) -> str | None:
    """The configured STUN/TURN servers as WHIP Link headers (rel="ice-server")."""
    links = []
    for server in settings.ice_servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                user = server.username.replace('"', "")
                cred = server.credential.replace('"', "")
                link += f'; username="{user}"; credential="{cred}"; credential-type="password"'
            links.append(link)
    return ", ".join(links) or None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _recent(store: Store, stream: str, limit: int) -> list[SnippetRecord]:
    """The newest `limit` stored moments of a stream, newest first (the stores' `recent` gives
    them oldest first)."""
    return sorted(store.recent(stream, limit), key=lambda r: (r.start, r.index), reverse=True)


class WhipRouter(APIRouter):
    """The WHIP routes, with their sessions at hand (for status pages, tests, benchmarks)."""

    def __init__(self, sessions: WhipSessions, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sessions = sessions


def whip_router(services: Services) -> WhipRouter:
    """The WHIP endpoints (and GET /v1/streams/{stream}/timeline) over the app's services."""
    settings = services.manager.settings if services.manager is not None else Settings()
    hub = WhipSessions(services, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close()

    router = WhipRouter(hub, lifespan=lifespan, tags=["webrtc"])

    @router.options("/whip/{stream}", include_in_schema=False)
    async def preflight_endpoint(stream: str) -> Response:
        return Response(status_code=204, headers={**CORS, "Accept-Post": "application/sdp"})

    @router.options("/whip/{stream}/{session}", include_in_schema=False)
    async def preflight_session(stream: str, session: str) -> Response:
        return Response(
            status_code=204, headers={**CORS, "Accept-Patch": "application/trickle-ice-sdpfrag"}
        )

    @router.post("/whip/{stream}", status_code=201, response_class=Response)
    async def publish(stream: str, request: Request) -> Response:
        """Start publishing to `stream`: the body is an SDP offer, the answer comes back."""
        try:
            who = _caller(request, services)
            who.require(Scope.PUBLISH, stream)
        except LivesenseError as e:
            return _error(e.status, str(e), **getattr(e, "headers", {}))
        token = bearer_token(request.headers.get("authorization")) or ""
        grants: OpenGrants | None = getattr(request.app.state, "grants", None)
        try:
            check_stream_id(stream)
        except LivesenseError as e:
            return _error(400, str(e))
        if _media_type(request) != "application/sdp":
            return _error(415, "A WHIP offer must be sent with 'Content-Type: application/sdp'.")
        manager = services.manager
        if manager is None:
            return _error(503, "This process only answers queries; it ingests no streams.")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_SDP_BYTES:
            return _error(413, f"The SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB.")
        body = await request.body()
        if len(body) > MAX_SDP_BYTES:
            return _error(413, f"The SDP offer is larger than {MAX_SDP_BYTES // 1024} KiB.")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "The SDP offer is not valid UTF-8 text.")
        if not offer.strip():
            return _error(400, "The request has no SDP offer in its body.")

        async with hub.lock(stream):
            old = hub.by_stream(stream)
            limit = hub.webrtc.max_publishers
            if old is None and hub.active() >= limit:
                return _error(
                    503,
                    f"This service already has {limit} WebRTC publishers, its limit; "
                    "try again later.",
                    **{"Retry-After": "10"},
                )
            if old is None and stream in manager.running():
                url = manager.pipelines[stream].status.url  # credentials hidden
                if not url.startswith("whip://"):
                    return _error(
                        409, f"Stream {stream} is being ingested from {url}; stop it or pick "
                        "another stream id."
                    )
            hub.reserved += 1
            try:
                if old is not None:  # the publisher reconnected: the new session wins
                    await hub.end(old)
                if stream in manager.running():
                    await manager.stop(stream, timeout=REPLACE_TIMEOUT)
                return await _start(stream, offer, who, token, grants)
            finally:
                hub.reserved -= 1

    async def _start(
        stream: str, offer: str, who: Principal, token: str, grants: OpenGrants | None
    ) -> Response:
        manager = services.manager
        assert manager is not None
        s = hub.settings
        try:  # models load once per process: off the loop, which carries every publisher's media
            await asyncio.to_thread(manager.perception.load)
        except LivesenseError as e:
            return _error(e.status, str(e))
        source = WebRTCSource(
            f"whip://{stream}",
            timeline=hub.timeline(stream),
            fps=s.snippet.fps,
            max_side=s.snippet.max_side,
            queue_size=s.queues.media,
            ice_servers=hub.webrtc.ice_servers,
            idle_timeout=hub.webrtc.idle_timeout,
            sync_wait=hub.webrtc.sync_wait,
            limits=s.media,
        )
        try:
            answer = await source.accept(offer)
        except SourceError as e:
            await source.aclose()
            return _error(400, str(e))
        except Exception:  # the WebRTC library failing on hostile input: the offer's fault
            log.warning("WHIP offer for stream %s failed in the WebRTC library", stream,
                        exc_info=True)  # fmt: skip
            await source.aclose()
            return _error(400, UNUSABLE_OFFER)
        try:
            await manager.start(source.url, stream, realtime=True, source=source)
        except LivesenseError as e:
            await source.aclose()
            return _error(e.status, str(e))
        session = WhipSession(
            id=secrets.token_urlsafe(12),
            stream=stream,
            source=source,
            etag=f'"{secrets.token_hex(8)}"',
            started=time.time(),
        )
        if isinstance(grants, OpenGrants):  # a revoked token's session ends within
            session.grants = grants  # security.revocation_seconds

            async def end() -> None:
                await hub.end(session)

            session.grant = grants.hold(who, token, end)
        hub.sessions[session.id] = session
        hub.watch(session)
        headers = {
            **CORS,
            "Location": session.location,
            "ETag": session.etag,
            "Accept-Patch": "application/trickle-ice-sdpfrag",
        }
        link = _link_header(hub.webrtc)
        if link:
            headers["Link"] = link
        log.info("WHIP session %s publishes stream %s", session.id, stream)
        return Response(answer, status_code=201, media_type="application/sdp", headers=headers)

    def _session(stream: str, session: str) -> WhipSession:
        found = hub.sessions.get(session)
        if found is None or found.stream != stream:
            raise NotFoundError(f"There is no WHIP session {session[:40]} of stream {stream[:64]}.")
        return found

    def _published(request: Request, stream: str, session: str) -> WhipSession | Response:
        """The session a PATCH or DELETE names, or the response refusing the request."""
        if (denied := _denied(request, services, Scope.PUBLISH, stream)) is not None:
            return denied
        try:
            return _session(stream, session)
        except NotFoundError as e:
            return _error(404, str(e))

    @router.patch("/whip/{stream}/{session}", response_class=Response)
    async def trickle(stream: str, session: str, request: Request) -> Response:
        """Trickle ICE: add the publisher's candidates (ICE restarts are refused with 422)."""
        found = _published(request, stream, session)
        if isinstance(found, Response):
            return found
        if _media_type(request) != "application/trickle-ice-sdpfrag":
            return _error(
                415,
                "A WHIP PATCH must be sent with 'Content-Type: application/trickle-ice-sdpfrag'.",
            )
        match = request.headers.get("if-match")
        if match is not None and match.strip() == "*":
            return _error(422, "ICE restarts are not supported; start a new session instead.")
        if match is not None and match.strip() != found.etag:
            return _error(412, "The If-Match entity tag does not match this session's ETag.")
        body = (await request.body())[:MAX_SDP_BYTES].decode("utf-8", "replace")
        try:
            await found.source.add_candidates(body)
        except SourceError as e:
            status = 422 if "restart" in str(e) else 400
            return _error(status, str(e))
        except Exception:  # the WebRTC library failing on hostile input
            log.warning("WHIP PATCH of session %s failed in the WebRTC library", found.id,
                        exc_info=True)  # fmt: skip
            return _error(400, "The ICE candidates could not be added to this session.")
        return Response(status_code=204, headers={**CORS, "ETag": found.etag})

    @router.delete("/whip/{stream}/{session}")
    async def unpublish(stream: str, session: str, request: Request) -> Response:
        """End the session; what the stream stored so far stays in memory."""
        found = _published(request, stream, session)
        if isinstance(found, Response):
            return found
        await hub.end(found)
        return JSONResponse(
            {"stream": stream, "session": session, "ended": True}, headers=CORS
        )

    @router.get("/v1/streams/{stream}/timeline", tags=["streams"])
    def timeline(
        stream: str,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200)] = 30,
    ) -> Response:
        """The newest stored moments of a stream, newest first, with keyframe URLs, and the gaps
        (no media: the source dropped or its clock jumped) among them, newest first too."""
        if (denied := _denied(request, services, Scope.READ, stream)) is not None:
            return denied
        try:
            check_stream_id(stream)
        except LivesenseError as e:
            return _error(400, str(e))
        records = _recent(services.store, stream, limit)
        moments = []
        for r in records:
            evidence = r.evidence.to_json()
            if evidence.get("keyframe"):
                evidence["keyframe"] = f"/v1/keyframes/{evidence['keyframe']}"
            moments.append(
                {
                    "stream": stream,
                    "index": r.index,
                    "start": round(r.start, 3),
                    "end": round(r.end, 3),
                    "wall": r.wall,
                    "count": r.count,
                    "evidence": evidence,
                }
            )
        oldest = min((r.start for r in records), default=0.0)
        gaps = [
            {"start": g.start, "end": g.end, "reason": g.reason}
            for g in services.store.gaps(stream)
            if g.end >= oldest
        ][-limit:][::-1]
        live = hub.by_stream(stream)
        return JSONResponse(
            {
                "stream": stream,
                "moments": moments,
                "gaps": gaps,
                "publisher": None
                if live is None
                else {"session": live.id, "since": live.started, "clocks": live.source.clocks()},
            }
        )

    return router
