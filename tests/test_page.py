"""The web page in a real headless Chromium: publish a fake camera through the page's own
button, see the stream live, find the clip's speech and on-screen text from the page.

Chromium is driven over the DevTools protocol (CDP) with the `websockets` client the service
already depends on. A screenshot of the page is saved to tests/artifacts/page.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from livesense.sample import render_card
from tests.media import SPEECH_WAV
from tests.test_whip import TOKEN, LiveServer, server_settings

ARTIFACTS = Path(__file__).parent / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1360,1100",
]
SIZE = (640, 360)
FPS = 10
SECONDS = 8.0


def chromium() -> str:
    """A Chromium binary: found, or installed with apt when we may; else skip with the reason."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    reason = "Chromium is not installed"
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run(
            [apt, "install", "-y", "-qq", "chromium"], capture_output=True, text=True, env=env,
            timeout=900,
        )
        if done.returncode == 0 and (found := shutil.which("chromium")):
            return found
        reason += f" and 'apt-get install chromium' failed: {done.stderr.strip()[-200:]}"
    else:
        reason += " and this user cannot install it (run 'make sysdeps' as root)"
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI must run the browser test for real
    pytest.skip(reason)


def write_y4m(path: Path) -> None:
    """The fake camera: a title card (on-screen text the test knows) with a moving marker."""
    w, h = SIZE
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for n in range(int(SECONDS * FPS)):
            rgb = render_card(["GATE B52", "BOARDING"], SIZE, (20, 40, 90), n / FPS)
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


def write_wav(path: Path) -> None:
    """The fake microphone: the known sentence, padded with silence to the clip's length."""
    with wave.open(str(SPEECH_WAV)) as src:
        rate, pcm = src.getframerate(), src.readframes(src.getnframes())
    n = int(SECONDS * rate)
    samples = np.zeros(n, np.int16)
    speech = np.frombuffer(pcm, np.int16)[: n - rate // 2]
    samples[rate // 4 : rate // 4 + len(speech)] = speech
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


class Cdp:
    """The smallest DevTools protocol client: call a method, evaluate JavaScript."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def js(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression: str, seconds: float, what: str) -> Any:
        deadline = time.time() + seconds
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        shot = self.screenshot(ARTIFACTS / "page-failure.png")
        raise AssertionError(f"timed out waiting for {what} (screenshot: {shot})")

    def screenshot(self, path: Path) -> Path:
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Cdp]:
    exe = chromium()
    y4m, wav = tmp_path / "clip.y4m", tmp_path / "clip.wav"
    write_y4m(y4m)
    write_wav(wav)
    profile = tmp_path / "profile"
    args = [
        exe,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--use-file-for-fake-video-capture={y4m}",
        f"--use-file-for-fake-audio-capture={wav}",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.time() > deadline:
                err = proc.stderr.read().decode(errors="replace")[-400:] if proc.stderr else ""
                pytest.fail(f"Chromium did not start: {err}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as ws:
            cdp = Cdp(ws)
            cdp.call("Page.enable")
            cdp.call("Runtime.enable")
            metrics(cdp, 1360, 1100)
            yield cdp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def metrics(cdp: Cdp, width: int, height: int) -> None:
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        width=width, height=height, deviceScaleFactor=1, mobile=width < 600,
    )


def type_and_click(cdp: Cdp, field: str, text: str, button: str) -> None:
    field_js, text_js, button_js = json.dumps(field), json.dumps(text), json.dumps(button)
    cdp.js(
        f"(() => {{ document.querySelector({field_js}).value = {text_js};"
        f" document.querySelector({button_js}).click(); }})()"
    )


@pytest.mark.slow
def test_page_publishes_and_finds_speech_and_text(browser: Cdp, tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "memory")
    with LiveServer(settings) as live:
        cdp = browser
        cdp.call("Page.navigate", url=f"{live.url}/?token={TOKEN}&stream=lobby")
        cdp.until("document.readyState === 'complete' && !!document.querySelector('#publish')",
                  20, "the page")
        assert cdp.js("document.title") == "livesense"
        assert cdp.js("location.search") == "?stream=lobby"  # the token left the address bar

        # Publish through the page's own button; the page says it is live.
        cdp.js("document.querySelector('#publish').click()")
        cdp.until("document.body.dataset.state === 'live'", 30, "the page to go live")
        assert cdp.js("document.querySelector('#st-state').textContent.trim()") == "Live"
        assert cdp.js("getComputedStyle(document.querySelector('#live-badge')).display") == "block"
        assert live.manager.pipelines["lobby"].url == "whip://lobby"

        # A standing query, then moments arriving in the timeline with keyframes.
        type_and_click(cdp, "#watch-input", "boarding", "#watch-form button")
        cdp.until("document.querySelectorAll('#timeline .moment-row').length >= 4", 90,
                  "four moments in the timeline")
        cdp.until("[...document.querySelectorAll('#timeline img')].some(i => i.naturalWidth > 0)",
                  20, "a keyframe")
        cdp.until("Number(document.querySelector('#st-snippets').textContent) >= 4", 10,
                  "the status to count moments")
        cdp.until("Number(document.querySelector('.watch-item .count')?.textContent) >= 1", 60,
                  "the watch to light up")

        # Search in the page finds the on-screen text and the speech.
        type_and_click(cdp, "#search-input", "B52", "#search-btn")
        cdp.until("document.querySelector('#results').textContent.includes('B52')", 20,
                  "a hit showing B52")
        # Whisper tiny hears the fake microphone; the speech is in the moments it stored.
        cdp.until(
            "[...document.querySelectorAll('#timeline .said')]"
            ".some(p => /rome|platform|tickets/i.test(p.textContent))",
            60, "speech in the timeline",
        )
        type_and_click(cdp, "#search-input", "train to Rome", "#search-btn")
        cdp.until(
            "[...document.querySelectorAll('#results .said')]"
            ".some(p => /rome/i.test(p.textContent))",
            20, "a hit saying Rome",
        )
        type_and_click(cdp, "#search-input", "Where does the train to Rome leave from?", "#ask-btn")
        answer = cdp.until(
            "(() => { const a = document.querySelector('#answer');"
            " return !a.hidden && a.textContent.startsWith('Answer') && a.textContent })()",
            20, "an answer",
        )
        assert "rome" in answer.lower() or "platform" in answer.lower(), answer
        assert cdp.js("document.querySelectorAll('#results .moment-row').length") >= 1
        time.sleep(1.0)  # let the keyframes of the answer's moments load
        shot = cdp.screenshot(ARTIFACTS / "page.png")
        assert shot.stat().st_size > 20_000
        metrics(cdp, 400, 1400)  # the same page on a phone: one column, nothing cut off
        time.sleep(0.5)
        assert cdp.js("document.documentElement.scrollWidth") <= 400
        cdp.screenshot(ARTIFACTS / "page-narrow.png")
        metrics(cdp, 1360, 1100)

        # Clicking an answer's moment jumps to it in the timeline.
        cdp.js("document.querySelector('#results .moment-row').click()")
        cdp.until("!!document.querySelector('#timeline .moment-row.flash') || "
                  "document.querySelector('#moment').open", 5, "the jump")

        # Stop from the page: the session ends and the stream's memory stays.
        cdp.js("(d => d.open && d.close())(document.querySelector('#moment'))")
        cdp.js("document.querySelector('#publish').click()")
        cdp.until("document.body.dataset.state !== 'live'", 10, "the page to stop")
        deadline = time.time() + 60
        while live.status("lobby").get("state") != "done" and time.time() < deadline:
            time.sleep(0.5)
        assert live.status("lobby")["state"] == "done"
        assert live.store.count("lobby") >= 4

        # The header names the newest moment (by time), and the rows run newest first.
        end = round(max(r.end for r in live.store.recent("lobby", 200)))
        want = f"newest {end // 60}:{end % 60:02d}"
        cdp.until(
            f"document.querySelector('#timeline-sub').textContent.includes({json.dumps(want)})",
            20, f"the timeline header to say {want!r}",
        )
        starts = cdp.js(
            "[...document.querySelectorAll('#timeline .moment-row')]"
            ".map(r => Number(r.dataset.start))"
        )
        assert starts == sorted(starts, reverse=True), starts


def test_api_docs_render_from_local_files(browser: Cdp, tmp_path: Path) -> None:
    with LiveServer(server_settings(tmp_path / "memory")) as live:
        html = urllib.request.urlopen(f"{live.url}/docs", timeout=10).read().decode()
        assert "cdn." not in html and "/docs/assets/swagger-ui-bundle.js" in html
        browser.call("Page.navigate", url=f"{live.url}/docs")
        browser.until("document.querySelectorAll('.opblock').length >= 10", 30, "the operations")
        title = browser.js("document.querySelector('.info .title')?.textContent || ''")
        assert title.startswith("livesense"), title
        assert "/v1/search" in browser.js("document.body.textContent")
        sources = browser.js("performance.getEntriesByType('resource').map(e => e.name)")
        assert sources and all(s.startswith(live.url) for s in sources), sources


@pytest.mark.slow
def test_page_shows_what_was_seen_as_tags_and_boxes(browser: Cdp, tmp_path: Path) -> None:
    from tests.conftest import livesense
    from tests.media import make_photo_clip

    clip = make_photo_clip(tmp_path / "photos.mp4", [("chelsea", 2.0), ("motorcycle_left", 2.0)])
    memory = tmp_path / "memory"
    done = livesense("ingest", str(clip), "--memory", str(memory), "--stream", "photos")
    assert done.returncode == 0, done.stderr
    with LiveServer(server_settings(memory)) as live:
        cdp = browser
        cdp.call("Page.navigate", url=f"{live.url}/?token={TOKEN}&stream=photos")
        tags = cdp.until(
            "(() => { const t = [...document.querySelectorAll('#timeline .tag.obj')]"
            ".map(e => e.textContent); return t.length >= 2 && t })()",
            30, "object tags on the moments",
        )
        assert "cat" in tags and "motorcycle" in tags, tags
        cdp.js("[...document.querySelectorAll('#timeline .moment-row')].pop().click()")
        boxes = cdp.until(
            "(() => { const b = [...document.querySelectorAll('#moment-boxes .box')];"
            " return b.length && b.map(e => [e.textContent, e.offsetWidth, e.offsetHeight]) })()",
            20, "boxes over the keyframe",
        )
        assert boxes[0][0].startswith("cat") and boxes[0][1] > 100 and boxes[0][2] > 50, boxes
        cdp.screenshot(ARTIFACTS / "page-objects.png")
