"""The HTTP/WebSocket contract on real memory and a real ingest started through the API."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from livesense.api.app import Services, create_app
from livesense.config import load_settings
from livesense.memory.store import MemoryStore
from livesense.memory.watch import WatchHub
from livesense.pipeline.manager import StreamManager
from livesense.pipeline.perception import Perception

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(sample_memory: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    memory = tmp_path_factory.mktemp("api") / "memory"
    shutil.copytree(sample_memory, memory)
    settings = load_settings(memory=memory)
    hub = WatchHub()
    store = MemoryStore(memory, settings.store, hub=hub)
    manager = StreamManager(settings, store, Perception.from_settings(settings), max_streams=2)
    app = create_app(Services(store=store, manager=manager, hub=hub, token=TOKEN))
    with TestClient(app) as c:
        yield c
    store.close()


def test_healthz_needs_no_token(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/search?q=rome", "/v1/streams", "/metrics"])
def test_token_required(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "error" in client.get(path).json()


def test_search_contract(client: TestClient) -> None:
    r = client.get("/v1/search", params={"q": "platform 9", "top_k": 2}, headers=AUTH)
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert 1 <= len(hits) <= 2
    assert set(hits[0]) == {"stream", "start", "end", "score", "evidence"}
    assert hits[0]["end"] <= 7.5
    kf = hits[0]["evidence"]["keyframe"]
    assert kf and kf.startswith("/v1/keyframes/")
    img = client.get(kf, headers=AUTH)
    assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"  # a JPEG


def test_search_time_filter(client: TestClient) -> None:
    r = client.get("/v1/search", params={"q": "cafe", "start": 7, "end": 14}, headers=AUTH)
    assert all(h["end"] > 7 for h in r.json()["hits"])


def test_ask_contract(client: TestClient) -> None:
    r = client.post(
        "/v1/ask", json={"question": "Where does the Rome train leave from?"}, headers=AUTH
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"answer", "hits"} and body["hits"]
    assert body["hits"][0]["start"] < 7.0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/v1/search", {"params": {"q": ""}}, 422),
        ("get", "/v1/search", {"params": {"q": "x", "top_k": "many"}}, 422),
        ("get", "/v1/search", {"params": {"q": "x", "top_k": 0}}, 422),
        ("get", "/v1/search", {"params": {"q": "x" * 2000}}, 422),
        ("get", "/v1/search", {"params": {"q": "x", "stream": "../../etc"}}, 400),
        (
            "post",
            "/v1/ask",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("post", "/v1/ask", {"json": {"stream": "a"}}, 422),
        ("get", "/v1/keyframes/sample/../../x", {}, 404),
        ("get", "/v1/keyframes/sample/99999.jpg", {}, 404),
        ("delete", "/v1/streams/nope", {}, 404),
        ("post", "/v1/streams", {"json": {"url": "/nonexistent.mp4"}}, 422),
    ],
)
def test_bad_requests_get_a_reason(
    client: TestClient, method: str, path: str, kwargs: dict, status: int
) -> None:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_start_stream_watch_and_stop(client: TestClient, sample_clip: Path) -> None:
    with client.websocket_connect(
        "/v1/watch?q=cafe%20open%20until&stream=live1", headers=AUTH
    ) as ws:
        assert ws.receive_json()["watching"]["q"] == "cafe open until"
        r = client.post(
            "/v1/streams", json={"url": str(sample_clip), "stream": "live1"}, headers=AUTH
        )
        assert r.status_code == 201, r.text
        assert r.json()["stream"] == "live1"
        msg = ws.receive_json()  # pushed as soon as the matching moment is stored
        assert msg["hit"]["stream"] == "live1" and msg["hit"]["start"] >= 6.0
    deadline = time.time() + 120
    while time.time() < deadline:
        streams = {
            s["stream"]: s for s in client.get("/v1/streams", headers=AUTH).json()["streams"]
        }
        ingest = streams.get("live1", {}).get("ingest") or {}
        if ingest.get("state") == "done":
            break
        time.sleep(0.5)
    assert streams["live1"]["records"] >= 6
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'livesense_snippets_total{stream="live1"}' in metrics
    assert "livesense_stage_seconds_bucket" in metrics


def test_watch_rejects_bad_token(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1/watch?q=x") as ws:
        ws.receive_json()
