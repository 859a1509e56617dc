"""Test media: real encoded clips whose pictures and sound say what time they are.

Every video frame carries its stream frame number as a bar of black/white blocks along the
bottom (`marker_frame` reads it back) and every second of the tone has its own pitch
(`tone_second` reads it back), so tests can check that pictures and sound stay aligned.
"""

from __future__ import annotations

import select
import socket
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from livesense.records import AUDIO_RATE, AudioChunk, EndOfStream, Gap, VideoFrame
from livesense.sample import write_clip

SPEECH_WAV = Path(__file__).parent / "data" / "speech.wav"
SPEECH_TEXT = (
    "The train to Rome leaves from platform nine at seven thirty. Please have your tickets ready."
)

MARKER_BITS = 20  # frame numbers up to ~9.7 hours at 30 fps
TONE_BASE = 400.0  # Hz of second 0
TONE_STEP = 100.0  # Hz added per second
TONE_CYCLE = 20  # the pitch pattern repeats every 20 s
TONE_AMPLITUDE = 0.3

# suffix -> (muxer, video encoder, audio encoder, audio rate)
CONTAINERS: dict[str, tuple[str, str | None, str, int]] = {
    ".mp4": ("mp4", "libx264", "aac", 44100),
    ".mov": ("mov", "libx264", "aac", 44100),
    ".mkv": ("matroska", "libx264", "aac", 48000),
    ".ts": ("mpegts", "libx264", "aac", 48000),
    ".webm": ("webm", "libvpx", "libopus", 48000),
    ".wav": ("wav", None, "pcm_s16le", 22050),
    ".mp3": ("mp3", None, "libmp3lame", 44100),
    ".ogg": ("ogg", None, "libopus", 48000),
}
AUDIO_ONLY = {".wav", ".mp3", ".ogg"}

Item = VideoFrame | AudioChunk | Gap | EndOfStream


def tone_freq(second: int, base: float = TONE_BASE) -> float:
    """Pitch of the test tone during stream second `second`."""
    return base + TONE_STEP * (second % TONE_CYCLE)


def tone_second(samples: np.ndarray, rate: int = AUDIO_RATE, base: float = TONE_BASE) -> int:
    """Which second (modulo TONE_CYCLE) a stretch of test tone comes from, by its pitch."""
    x = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak = float(np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spectrum))])
    return int(round((peak - base) / TONE_STEP)) % TONE_CYCLE


def marker_frame(image: np.ndarray) -> int:
    """The frame number a test clip's picture shows in its bottom bar."""
    h, w = image.shape[:2]
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    bar_h = h / 8.0
    y0, y1 = int(h - bar_h * 0.75), int(h - bar_h * 0.25)
    value = 0
    for i in range(MARKER_BITS):
        x0 = int(w * (i + 0.3) / MARKER_BITS)
        x1 = max(x0 + 1, int(w * (i + 0.7) / MARKER_BITS))
        bit = float(gray[y0:y1, x0:x1].mean()) > 128.0
        value = (value << 1) | int(bit)
    return value


def marker_time(image: np.ndarray, fps: float) -> float:
    """The stream time (s) a test clip's picture shows, for a clip made at `fps`."""
    return marker_frame(image) / fps


def _draw_frame(number: int, t: float, size: tuple[int, int], text: str | None) -> np.ndarray:
    w, h = size
    second = int(t)
    hue = (second * 37) % 180
    hsv = np.zeros((h, w, 3), np.uint8)
    hsv[:] = (hue, 120, 140)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    bar_h = h // 8
    img[h - bar_h :] = 0
    for i in range(MARKER_BITS):
        if (number >> (MARKER_BITS - 1 - i)) & 1:
            x0 = int(w * i / MARKER_BITS)
            x1 = int(w * (i + 1) / MARKER_BITS)
            img[h - bar_h :, x0:x1] = 255
    if text:
        _put_text(img, text, h - bar_h)
    return img


def _put_text(img: np.ndarray, text: str, bottom: int) -> None:
    """Black text on a white box, as large as fits, centred above the marker bar."""
    w = img.shape[1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    lines = text.split("\n")
    scale = 4.0
    while scale > 0.3:
        sizes = [cv2.getTextSize(line, font, scale, max(1, int(scale * 2)))[0] for line in lines]
        widest = max(s[0] for s in sizes)
        total = sum(s[1] for s in sizes) * 1.8
        if widest <= w * 0.9 and total <= bottom * 0.8:
            break
        scale *= 0.9
    thick = max(1, int(scale * 2))
    line_h = int(max(s[1] for s in sizes) * 1.8)
    y = int((bottom - line_h * len(lines)) / 2)
    box_bottom = min(bottom, y + line_h * len(lines))
    cv2.rectangle(img, (0, max(0, y)), (w, box_bottom), (255, 255, 255), -1)
    for line, (tw, th) in zip(lines, sizes, strict=True):
        x = (w - tw) // 2
        y += line_h
        base = y - (line_h - th) // 2
        cv2.putText(img, line, (x, base), font, scale, (0, 0, 0), thick, cv2.LINE_AA)


def _stream_time(content_t: float, gap_at: float | None, gap_seconds: float) -> float:
    if gap_at is not None and content_t >= gap_at:
        return content_t + gap_seconds
    return content_t


def _speech(rate: int, n: int, wav: Path) -> np.ndarray:
    with av.open(str(wav)) as src:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts: list[np.ndarray] = []
        for frame in src.decode(audio=0):
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    speech = np.concatenate(parts).astype(np.float32)
    out = np.zeros(n, np.float32)
    out[: min(n, len(speech))] = speech[:n]
    return out


def _tone(rate: int, n: int, base: float, gap_at: float | None, gap_seconds: float) -> np.ndarray:
    t_content = np.arange(n) / rate
    t_stream = np.where(
        (t_content >= gap_at) if gap_at is not None else False, t_content + gap_seconds, t_content
    )
    freq = base + TONE_STEP * (np.floor(t_stream).astype(np.int64) % TONE_CYCLE)
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return (TONE_AMPLITUDE * np.sin(phase)).astype(np.float32)


def make_clip(
    path: str | Path,
    seconds: float = 4.0,
    *,
    video: bool = True,
    audio: bool = True,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    text: str | None = None,
    speech_wav: str | Path | None = None,
    tone_hz: float | None = None,
    gap_at: float | None = None,
    gap_seconds: float = 0.0,
) -> Path:
    """Encode a real clip (container and codecs chosen by the file suffix) and return its path.

    Frames show their stream frame number (`marker_frame`) and, if given, `text` in large
    letters. Audio is `speech_wav` (resampled, cut or padded to the clip) or else a tone whose
    pitch says the second (`tone_second`, base pitch `tone_hz`). `gap_at`/`gap_seconds` make a
    PTS jump: media from content time `gap_at` on is stamped `gap_seconds` later.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"make_clip cannot write {suffix} files")
    muxer, vcodec, acodec, rate = CONTAINERS[suffix]
    if suffix in AUDIO_ONLY:
        video = False
    if not (video or audio):
        raise ValueError("make_clip needs video or audio")
    w, h = size
    out = av.open(str(path), "w", format=muxer)
    vstream: Any = None
    astream: Any = None
    if video:
        assert vcodec is not None
        options = {"g": str(fps)}
        if vcodec == "libx264":
            options.update(preset="veryfast", crf="20")
        else:
            options.update({"deadline": "realtime", "cpu-used": "16", "b": "2M"})
        vstream = out.add_stream(vcodec, rate=fps, options=options)
        vstream.width, vstream.height = w, h
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = Fraction(1, fps)
        vstream.codec_context.time_base = Fraction(1, fps)
    if audio:
        astream = out.add_stream(acodec, rate=rate)
        astream.layout = "mono"
        astream.time_base = Fraction(1, rate)

    samples = np.zeros(0, np.float32)
    rate_n = int(round(seconds * rate))
    if astream is not None:
        if speech_wav is not None:
            samples = _speech(rate, rate_n, Path(speech_wav))
        else:
            samples = _tone(rate, rate_n, tone_hz or TONE_BASE, gap_at, gap_seconds)
    block = 1024
    next_sample = 0

    def write_audio_until(content_t: float) -> None:
        nonlocal next_sample
        assert astream is not None
        while next_sample < rate_n and next_sample / rate <= content_t:
            chunk = samples[next_sample : next_sample + block]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = int(round(_stream_time(next_sample / rate, gap_at, gap_seconds) * rate))
            frame.time_base = Fraction(1, rate)
            out.mux(astream.encode(frame))
            next_sample += len(chunk)

    n_frames = int(round(seconds * fps)) if vstream is not None else 0
    for n in range(n_frames):
        assert vstream is not None
        content_t = n / fps
        if astream is not None:
            write_audio_until(content_t)
        t = _stream_time(content_t, gap_at, gap_seconds)
        number = int(round(t * fps))
        frame = av.VideoFrame.from_ndarray(_draw_frame(number, t, size, text), format="rgb24")
        frame.pts = number
        frame.time_base = Fraction(1, fps)
        out.mux(vstream.encode(frame.reformat(format="yuv420p")))
    if astream is not None:
        write_audio_until(seconds)
        out.mux(astream.encode(None))
    if vstream is not None:
        out.mux(vstream.encode(None))
    out.close()
    return path


def slide(caption: str, size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """A still slide (the same picture for every caption) with `caption` in a lower-third bar."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 60, 110)
    cv2.circle(img, (w // 4, h // 3), h // 6, (200, 160, 40), -1)
    cv2.rectangle(img, (w * 5 // 8, h // 7), (w * 9 // 10, h * 5 // 9), (60, 140, 60), -1)
    cv2.rectangle(img, (0, h * 7 // 9), (w, h * 11 // 12), (15, 15, 15), -1)
    scale = h / 450
    org = (w // 20, h * 7 // 8)
    cv2.putText(img, caption, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                max(1, round(2 * scale)), cv2.LINE_AA)
    return img


def make_slides(
    path: str | Path,
    captions: list[tuple[float, str]],
    seconds: float,
    *,
    size: tuple[int, int] = (1280, 720),
    fps: int = 25,
) -> Path:
    """An H.264 clip of one still slide whose caption alone changes: `captions` are
    (from second, text), in time order. No audio."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        pictures: dict[str, np.ndarray] = {}
        for n in range(int(round(seconds * fps))):
            text = [c for t, c in captions if t <= n / fps][-1]
            if text not in pictures:
                pictures[text] = slide(text, size)
            frame = av.VideoFrame.from_ndarray(pictures[text], format="rgb24")
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    return path


def truncate_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Write the first `keep` fraction of the bytes of `src` to `dst` (a cut-off download)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def split_items(
    items: list[Item],
) -> tuple[list[VideoFrame], list[AudioChunk], list[Gap], list[EndOfStream]]:
    """Sort a source's items by kind."""
    frames = [i for i in items if isinstance(i, VideoFrame)]
    chunks = [i for i in items if isinstance(i, AudioChunk)]
    gaps = [i for i in items if isinstance(i, Gap)]
    ends = [i for i in items if isinstance(i, EndOfStream)]
    return frames, chunks, gaps, ends


def audio_seconds(chunks: list[AudioChunk]) -> float:
    """Total length (s) of decoded 16 kHz audio chunks."""
    return sum(len(c.samples) for c in chunks) / AUDIO_RATE


# ---- a small RTSP server -----------------------------------------------------------------


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets bound to consecutive local ports (RTP on the even one, RTCP next)."""
    for _ in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1] & ~1
        probe.close()
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            rtp.bind(("127.0.0.1", port))
            rtcp.bind(("127.0.0.1", port + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        return rtp, rtcp
    raise RuntimeError("no free pair of UDP ports")


class RtspServer:
    """A minimal RTSP server (DESCRIBE/SETUP/PLAY, TCP-interleaved or UDP) for one clip.

    FFmpeg's RTSP muxer can only push to a server, so ffmpeg packetises the clip as RTP
    (with RTCP sender reports, paced with -re) to local UDP ports, and this server relays
    those packets to the client that played. Use as a context manager; `url` to connect.
    """

    def __init__(self, clip: str | Path, path: str = "live") -> None:
        self.clip = Path(clip)
        self.path = path
        self.sessions = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/{path}"
        self._streams = self._probe_streams()
        self._sdp = self._make_sdp()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def _probe_streams(self) -> list[str]:
        with av.open(str(self.clip)) as c:
            kinds: list[str] = [s.type for s in c.streams if s.type in ("video", "audio")]
        return kinds

    def _ffmpeg_args(self, ports: list[int]) -> list[str]:
        args = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(self.clip)]
        for i, (kind, port) in enumerate(zip(self._streams, ports, strict=True)):
            args += ["-map", f"0:{kind[0]}", "-c", "copy", "-f", "rtp"]
            args += ["-ssrc", str(1000 + i), f"rtp://127.0.0.1:{port}?rtcpport={port + 1}"]
        return args

    def _make_sdp(self) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            sdp = Path(tmp) / "clip.sdp"
            args = self._ffmpeg_args([9] * len(self._streams))
            args = [a for a in args if a != "-re"]
            args[args.index("-i") : args.index("-i")] = ["-t", "0.1"]
            subprocess.run([*args, "-sdp_file", str(sdp)], check=True, timeout=30)
            text = sdp.read_text()
        out: list[str] = []
        track = 0
        for line in text.splitlines():
            if line.startswith("m="):
                parts = line.split()
                parts[1] = "0"
                line = " ".join(parts)
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            out.append(line)
            if line.startswith("m="):
                out.append(f"a=control:trackID={track}")
                track += 1
        out.insert(4, "a=control:*")
        return "\r\n".join(out) + "\r\n"

    def __enter__(self) -> RtspServer:
        self._listener.listen(4)
        self._listener.settimeout(0.2)
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        send_lock = threading.Lock()
        buf = b""
        targets: dict[int, tuple[str, int]] = {}  # track -> ("tcp", channel) | ("udp", port)
        relay: threading.Thread | None = None
        session = str(12345678 + self.sessions)
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    if relay is not None and not relay.is_alive():
                        return  # the clip is over: hang up, the client sees the end
                    continue
                if not data:
                    return
                buf += data
                while True:
                    if buf[:1] == b"$":  # interleaved RTCP from the client: skip it
                        if len(buf) < 4:
                            break
                        size = int.from_bytes(buf[2:4], "big")
                        if len(buf) < 4 + size:
                            break
                        buf = buf[4 + size :]
                        continue
                    head, sep, rest = buf.partition(b"\r\n\r\n")
                    if not sep:
                        break
                    lines = head.decode("latin-1").split("\r\n")
                    headers = {}
                    for line in lines[1:]:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0"))
                    if len(rest) < length:
                        break
                    buf = rest[length:]
                    method, uri = lines[0].split()[:2]
                    reply, body = self._answer(method, uri, headers, targets, session)
                    with send_lock:
                        conn.sendall(reply + body)
                    if method == "PLAY" and relay is None:
                        relay = threading.Thread(
                            target=self._relay, args=(conn, send_lock, dict(targets)), daemon=True
                        )
                        relay.start()
                        self._threads.append(relay)
                        self.sessions += 1
        except OSError:
            return
        finally:
            conn.close()

    def _answer(
        self,
        method: str,
        uri: str,
        headers: dict[str, str],
        targets: dict[int, tuple[str, int]],
        session: str,
    ) -> tuple[bytes, bytes]:
        cseq = headers.get("cseq", "0")
        extra: list[str] = []
        body = b""
        status = "200 OK"
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
        elif method == "DESCRIBE":
            if f"/{self.path}" not in uri:
                status = "404 Not Found"
            else:
                body = self._sdp.encode()
                extra += [
                    f"Content-Base: {self.url}/",
                    "Content-Type: application/sdp",
                    f"Content-Length: {len(body)}",
                ]
        elif method == "SETUP":
            track = int(uri.rsplit("trackID=", 1)[1])
            transport = headers.get("transport", "")
            if "interleaved=" in transport:
                channel = int(transport.split("interleaved=")[1].split("-")[0].split(";")[0])
                targets[track] = ("tcp", channel)
                extra.append(f"Transport: RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}")
            else:
                port = int(transport.split("client_port=")[1].split("-")[0].split(";")[0])
                targets[track] = ("udp", port)
                extra.append(
                    f"Transport: RTP/AVP;unicast;client_port={port}-{port + 1};server_port=9-10"
                )
            extra.append(f"Session: {session}")
        elif method in ("PLAY", "TEARDOWN", "GET_PARAMETER"):
            extra.append(f"Session: {session}")
            if method == "PLAY":
                extra.append("Range: npt=0.000-")
        else:
            status = "405 Method Not Allowed"
        head = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *extra]
        return ("\r\n".join(head) + "\r\n\r\n").encode(), body

    def _relay(
        self, conn: socket.socket, send_lock: threading.Lock, targets: dict[int, tuple[str, int]]
    ) -> None:
        """Run ffmpeg to local UDP ports and pass every RTP/RTCP packet to the client."""
        pairs = [_udp_pair() for _ in self._streams]
        route: dict[socket.socket, tuple[int, int]] = {}  # socket -> (track, 0 rtp | 1 rtcp)
        for track, (rtp_sock, rtcp_sock) in enumerate(pairs):
            route[rtp_sock] = (track, 0)
            route[rtcp_sock] = (track, 1)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        proc = subprocess.Popen(
            self._ffmpeg_args([rtp.getsockname()[1] for rtp, _ in pairs]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self._procs.append(proc)
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(route), [], [], 0.2)
                if not ready and proc.poll() is not None:
                    return
                for sock in ready:
                    packet = sock.recv(65536)
                    track, is_rtcp = route[sock]
                    if track not in targets:
                        continue
                    how, where = targets[track]
                    if how == "tcp":
                        frame = b"$" + bytes([where + is_rtcp]) + len(packet).to_bytes(2, "big")
                        with send_lock:
                            conn.sendall(frame + packet)
                    else:
                        out.sendto(packet, ("127.0.0.1", where + is_rtcp))
        except OSError:
            return
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            out.close()
            for rtp, rtcp in pairs:
                rtp.close()
                rtcp.close()


PHOTOS = {
    # skimage.data name -> what the picture shows
    "chelsea": "a cat",
    "motorcycle_left": "a red motorcycle in a garage",
    "coffee": "a cup of coffee",
    "astronaut": "a person (an astronaut)",
    "rocket": "a rocket on its launch pad",
}


def photo(name: str) -> np.ndarray:
    """A real photograph shipped inside scikit-image (RGB uint8); "a+b" puts two side by side
    at the same height (two people: "astronaut+camera")."""
    from skimage import data

    if "+" in name:
        parts = [photo(p) for p in name.split("+")]
        h = min(p.shape[0] for p in parts)
        return np.hstack(
            [cv2.resize(p, (round(p.shape[1] * h / p.shape[0]), h)) for p in parts]
        )

    if name == "motorcycle_left":
        return np.asarray(data.stereo_motorcycle()[0])
    img = np.asarray(getattr(data, name)())
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img[:, :, :3]


def make_photo_clip(
    path: str | Path,
    shots: list[tuple[str, float]],
    *,
    size: tuple[int, int] = (640, 360),
    fps: int = 10,
    music: tuple[float, float] | None = None,
) -> Path:
    """An H.264 + AAC clip of photographs shown one after another, each for its seconds,
    fitted into the frame on black (no text); silent, or a C major chord (music) between the
    two times of `music`."""
    path = Path(path)
    w, h = size
    rate = 48_000
    total = sum(s for _, s in shots)
    t = np.arange(int(total * rate)) / rate
    audio = np.zeros(len(t), np.float32)
    if music is not None:
        on = (t >= music[0]) & (t < music[1])
        notes = (261.63, 329.63, 392.0, 523.25)
        audio[on] = sum(0.1 * np.sin(2 * np.pi * f * t[on]) for f in notes)
    cards = []
    for name, _ in shots:
        img = photo(name)
        scale = min(w / img.shape[1], h / img.shape[0])
        small = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)))
        card = np.zeros((h, w, 3), np.uint8)
        y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
        card[y : y + small.shape[0], x : x + small.shape[1]] = small
        cards.append(card)
    bounds = np.cumsum([s for _, s in shots])
    shown = np.searchsorted(bounds, np.arange(int(total * fps)) / fps, side="right")
    frames = (cards[int(k)] for k in shown)
    write_clip(path, frames, audio, size=size, fps=fps, rate=rate, crf=20)
    return path


def sign(text: str, w: int = 640, h: int = 200) -> np.ndarray:
    """A light card with one line of large dark text (the same pixels in RGB and BGR)."""
    img = np.full((h, w, 3), 235, np.uint8)
    cv2.putText(img, text, (30, h // 2 + 20), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (20, 20, 20), 4)
    return img
