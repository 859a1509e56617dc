"""Hostile HTTP: every operation of the OpenAPI schema fuzzed with hypothesis, plus oversize,
malformed and tricky requests. Nothing may answer 5xx; every refusal says why in JSON."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import WebSocketDenialResponse

from livesense.api.app import Services, create_app
from livesense.api.server import Server, server_config
from livesense.api.tokens import SqliteTokenStore
from livesense.config import PerceptionSettings, SecuritySettings, load_settings
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from livesense.pipeline.manager import StreamManager
from livesense.pipeline.perception import Perception
from tests.test_auth import ADMIN, fill, free_port

EXAMPLES = int(os.environ.get("LIVESENSE_FUZZ_REQUESTS", "60"))  # per operation
FUZZED = {"requests": 0, "by_status": {}}

TRICKS = [
    "", " ", "-1", "0", "1e309", "-1e309", "NaN", "inf", "1" * 30, "9" * 5000, "0x10", "1_0",
    "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "....//....//", "/etc/passwd", "%00", "\x00",
    "'; DROP TABLE records; --", "\" OR 1=1 --", "<script>alert(1)</script>", "${jndi:ldap://x}",
    "a" * 2000, "\U0001f600" * 300, "cam1", "cam2", "cam1/../cam2", "CON", "*", "%", "\\",
    "NEAR(a b)", "a AND b OR c NOT d", '"unterminated', "()", "{}", "[]", "null", "true",
]
values = st.one_of(
    st.sampled_from(TRICKS),
    st.text(max_size=120),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(str),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=50) | values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)


class Fuzzed:
    """The real app over a real two-stream memory, perception kept light (VAD + text)."""

    def __init__(self, root: Path) -> None:
        settings = load_settings(memory=root)
        self.store = MemoryStore(root, settings.store, hub=WatchHub())
        fill(self.store)
        self.tokens = SqliteTokenStore(root)
        self.read1, _ = self.tokens.create("read", "cam1")
        light = PerceptionSettings(asr=False, events=False, ocr=False, faces=False)
        manager = StreamManager(settings, self.store, Perception(light), max_streams=2)
        security = SecuritySettings(rate_per_minute=1e6, rate_burst=100000)
        services = Services(self.store, manager, WatchHub(), ADMIN, self.tokens, security)
        self.app = create_app(services)
        self.client = TestClient(self.app, raise_server_exceptions=False)
        self.client.__enter__()
        self.schema = self.app.openapi()

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.tokens.close()
        self.store.close()


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    f = Fuzzed(tmp_path_factory.mktemp("fuzz") / "memory")
    yield f
    f.close()
    out = Path(__file__).parent / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "fuzz_requests.json").write_text(json.dumps(FUZZED, indent=1))


def check(r: httpx.Response, reader: bool = False) -> None:
    """No 5xx; a refusal is JSON with a one-sentence reason; a reader sees only cam1."""
    FUZZED["requests"] += 1
    by = FUZZED["by_status"]
    by[str(r.status_code)] = by.get(str(r.status_code), 0) + 1
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:300], r.text[:300])
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        error = r.json()["error"]
        assert isinstance(error, str) and error and "Traceback" not in error
    if reader and r.status_code == 200 and r.headers.get("content-type") == "application/json":
        body = r.json()
        for hit in body.get("hits", []) if isinstance(body, dict) else []:
            assert hit["stream"] == "cam1"
        for s in body.get("streams", []) if isinstance(body, dict) else []:
            assert s["stream"] == "cam1"


def operations() -> list[tuple[str, str]]:
    # the schema of an app built the same way as the fixture's (routes do not depend on data)
    app = create_app(Services(None, None, WatchHub()))  # type: ignore[arg-type]
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            ops.append((method.upper(), path))
    return sorted(ops)


OPS = operations()


def resolve(schema: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in ref:
        name = ref["$ref"].rsplit("/", 1)[1]
        return dict(schema["components"]["schemas"][name])
    return ref


@pytest.mark.parametrize(("method", "path"), OPS, ids=[f"{m} {p}" for m, p in OPS])
def test_every_operation_survives_fuzzing(fz: Fuzzed, method: str, path: str) -> None:
    op = fz.schema["paths"][path][method.lower()]
    params = op.get("parameters", [])
    body_schema = (
        op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    )
    fields = list(resolve(fz.schema, body_schema).get("properties", {})) if body_schema else []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        url = path
        query: dict[str, str] = {}
        for p in params:
            if p["in"] == "path":
                v = data.draw(values | st.text(string.ascii_letters, min_size=1, max_size=8))
                raw = data.draw(st.booleans())
                url = url.replace("{" + p["name"] + "}", v if raw else quote(v, safe=""))
            elif p["in"] == "query" and data.draw(st.booleans()):
                query[p["name"]] = data.draw(values)
        if data.draw(st.booleans()):
            query[data.draw(st.sampled_from(["x", "q", "top_k", "stream"]))] = data.draw(values)
        headers = {"Authorization": f"Bearer {data.draw(st.sampled_from([ADMIN, fz.read1]))}"}
        content: bytes | None = None
        if method in ("POST", "PATCH", "PUT"):
            kind = data.draw(st.sampled_from(["object", "any", "bytes", "nested"]))
            if kind == "object":
                obj = {f: data.draw(json_values) for f in fields if data.draw(st.booleans())}
                content = json.dumps(obj).encode()
            elif kind == "any":
                content = json.dumps(data.draw(json_values)).encode()
            elif kind == "nested":
                content = b"[" * data.draw(st.integers(1, 200000))
            else:
                content = data.draw(st.binary(max_size=4096))
            headers["Content-Type"] = data.draw(
                st.sampled_from(["application/json", "application/sdp", "text/plain",
                                 "application/trickle-ice-sdpfrag"])
            )
        try:
            r = fz.client.request(method, url, params=query, content=content, headers=headers)
        except Exception as e:  # the client cannot even send it (bad URL or header)
            if type(e).__name__ not in ("InvalidURL", "UnicodeEncodeError", "LocalProtocolError"):
                raise
            return
        check(r, reader=headers["Authorization"].endswith(fz.read1))

    run()


def test_oversize_bodies_and_query_strings_are_refused(fz: Fuzzed) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    big = json.dumps({"question": "x" * (2 << 20)}).encode()
    r = fz.client.post("/v1/ask", content=big, headers=auth)
    check(r)
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b" " * 65536

    r = fz.client.post("/v1/ask", content=chunks(), headers=auth)
    check(r)
    assert r.status_code == 413
    r = fz.client.get("/v1/search", params={"q": "x" * 20000}, headers=auth)
    check(r)
    assert r.status_code == 414 and "query string" in r.json()["error"]
    r = fz.client.get("/v1/streams/" + "a" * 3000 + "/timeline", headers=auth)
    check(r)
    assert r.status_code == 414
    sdp = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/sdp"}
    r = fz.client.post("/whip/cam1", content=b"v=0\r\n" * 60000, headers=sdp)
    check(r)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"q": "train", "top_k": "abc"}, 422),
        ({"q": "train", "top_k": "0"}, 422),
        ({"q": "train", "top_k": "1e309"}, 422),
        ({"q": "train", "start": "nan"}, 422),
        ({"q": "train", "start": "inf"}, 400),
        ({"q": "train", "start": "5", "end": "1"}, 400),
        ({"q": ""}, 422),
        ({"q": "train", "stream": "../cam2"}, 400),
        ({"top_k": "3"}, 422),
    ],
)
def test_bad_numbers_and_fields_get_a_reason(
    fz: Fuzzed, params: dict[str, str], status: int
) -> None:
    r = fz.client.get("/v1/search", params=params, headers={"Authorization": f"Bearer {ADMIN}"})
    check(r)
    assert r.status_code == status, r.text
    assert r.json()["error"].endswith(".")


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"question": 5}', b'{"question": ""}', b"\xff\xfe", b"[" * 100000,
     b'{"question": "x", "stream": "a/b"}', b"null"],
)
def test_malformed_json_is_a_4xx(fz: Fuzzed, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    r = fz.client.post("/v1/ask", content=body, headers=headers)
    check(r)
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize(
    "offer",
    [b"garbage", b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", b"\xff" * 100, b"   ",
     b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 X 0\r\na=setup:xx\r\n"],
)
def test_malformed_sdp_is_a_4xx(fz: Fuzzed, offer: bytes) -> None:
    pytest.importorskip("aiortc")
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/sdp"}
    r = fz.client.post("/whip/cam1", content=offer, headers=headers)
    check(r)
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize(
    "url",
    [
        "/v1/keyframes/..%2F..%2F/passwd",
        "/v1/keyframes/cam1/..%2F..%2Fmemory.db",
        "/v1/keyframes/cam1/%2e%2e",
        "/v1/keyframes/cam1/%C2%B2.jpg",  # a digit that int() refuses
        "/v1/keyframes/cam1/" + "9" * 40 + ".jpg",
        "/v1/keyframes/cam1/-1.jpg",
        "/..%2F..%2Fetc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/../../memory.db",
        "/v1/streams/%00/timeline",
        "/whip/cam1/..%2F..%2Fx",
    ],
)
def test_path_tricks_reach_nothing(fz: Fuzzed, url: str) -> None:
    r = fz.client.get(url, headers={"Authorization": f"Bearer {ADMIN}"})
    check(r)
    assert r.status_code in (400, 404, 405), (url, r.status_code)
    assert b"SQLite" not in r.content and b"root:" not in r.content


def test_unknown_streams_are_404(fz: Fuzzed) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for r in (
        fz.client.delete("/v1/streams/nope", headers=auth),
        fz.client.get("/v1/keyframes/nope/0.jpg", headers=auth),
        fz.client.patch("/whip/nope/abc", content=b"a=x",
                        headers={**auth, "Content-Type": "application/trickle-ice-sdpfrag"}),
        fz.client.delete("/whip/nope/abc", headers=auth),
    ):
        check(r)
        assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    "query",
    ["q=", "q=" + "x" * 1001, "q=a&stream=../x", "q=a&stream=" + "s" * 65, "q=%20%20",
     "q=a&token=wrong", "stream=cam1"],
)
def test_hostile_watch_requests_are_refused_with_a_reason(fz: Fuzzed, query: str) -> None:
    FUZZED["requests"] += 1
    headers = {} if "token=" in query else {"Authorization": f"Bearer {ADMIN}"}
    with pytest.raises(WebSocketDenialResponse) as refused, fz.client.websocket_connect(
        "/v1/watch?" + query, headers=headers
    ) as ws:
        ws.receive_json()
    assert refused.value.status_code in (400, 401, 403)
    assert refused.value.json()["error"].endswith(".")


def aiortc_offer() -> str:
    """A real offer of an aiortc publisher (audio and video), as a WHIP client sends it."""
    aiortc = pytest.importorskip("aiortc")
    import asyncio

    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    async def make() -> str:
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = str(pc.localDescription.sdp)
        await pc.close()
        return sdp

    return asyncio.run(make())


def _text_section(offer: str) -> str:
    ice = [ln for ln in offer.splitlines() if ln.startswith(("a=ice-", "a=fingerprint", "a=setup"))]
    return (
        offer.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
        + "m=text 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sendonly\r\n"
        + "a=rtpmap:98 t140/1000\r\n" + "\r\n".join(ice[:4]) + "\r\n"
    )


HOSTILE_OFFERS = {
    "bundle names an absent mid first": lambda o: o.replace("a=group:BUNDLE 0 1",
                                                           "a=group:BUNDLE 9 0 1"),
    "bundle names an absent mid": lambda o: o.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 7"),
    "a text section": _text_section,
    "a text section outside the bundle": lambda o: _text_section(o).replace("BUNDLE 0 1 2",
                                                                            "BUNDLE 0 1"),
}
INTERNALS = ("NoneType", "attribute", "index out of range", "AssertionError", "Error)")


@pytest.mark.parametrize("mutation", list(HOSTILE_OFFERS))
def test_hostile_whip_offers_are_a_400_with_a_sentence(fz: Fuzzed, mutation: str) -> None:
    offer = HOSTILE_OFFERS[mutation](aiortc_offer())
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/sdp"}
    for _ in range(3):
        r = fz.client.post("/whip/cam9", content=offer.encode(), headers=headers)
        check(r)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error.endswith(".") and not any(x in error for x in INTERNALS), error


def test_hostile_trickle_candidates_are_a_400_and_the_session_lives_on(fz: Fuzzed) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = fz.client.post("/whip/cam8", content=aiortc_offer().encode(),
                       headers={**auth, "Content-Type": "application/sdp"})  # fmt: skip
    assert r.status_code == 201, r.text
    where = r.headers["Location"]
    frag = {**auth, "Content-Type": "application/trickle-ice-sdpfrag"}
    try:
        for bad in ("garbage", "1 1 udp 2130706431 192.0.2.7 40000 typ", "1 1 udp 1 x",
                    "", "1 1 udp 99 192.0.2.7 40000 host host",
                    "1 1 udp 2130706431 192.0.2.7 notaport typ host"):  # fmt: skip
            r = fz.client.patch(where, content=f"a=candidate:{bad}\r\n".encode(), headers=frag)
            check(r)
            assert r.status_code == 400, (bad, r.text)
            error = r.json()["error"]
            assert error.endswith(".") and not any(x in error for x in INTERNALS), error
        good = "a=mid:0\r\na=candidate:1 1 udp 2130706431 192.0.2.77 40000 typ host\r\n"
        assert fz.client.patch(where, content=good.encode(), headers=frag).status_code == 204
    finally:
        assert fz.client.delete(where, headers=auth).status_code == 200




def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are (no client library would send these) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):  # the server may answer before all is sent
            s.sendall(data)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
    return out


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET /v1/search?q=" + b"a" * (2 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
         "request line is longer"),
        (b"GET /v1/search?q=a\nb HTTP/1.1\r\nHost: x\r\n\r\n", 400, "not valid HTTP"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (1 << 20) + b"\r\n\r\n", 431,
         "request head is longer"),
    ],
    ids=["2MB-query", "raw-newline", "1MB-header"],
)
def test_requests_the_parser_refuses_get_a_json_reason_from_the_real_server(
    fz: Fuzzed, request_bytes: bytes, status: int, reason: str
) -> None:
    server = Server(server_config(fz.app, host="127.0.0.1", port=free_port(),
                                  log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        port = server.config.port
        answer = raw_request(port, request_bytes)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
        assert b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert reason in error and "\n" not in error, error
        ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)  # still serving
        assert ok.status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
