"""The REST API on a real `voxloop serve`: health, public config, transcribe, synthesize, voices, docs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import httpx
import jiwer
import numpy as np
import pytest
from av.audio.stream import AudioStream
from websockets.asyncio.client import connect

from tests.integration.servers import ServerProcess, free_port, running_server
from voxloop import __version__
from voxloop.engine import Engines
from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.config import Settings
from voxloop.server.app import create_app
from voxloop.server.rest import public_url

pytestmark = pytest.mark.integration

STAGES = ("vad", "stt", "llm", "tts", "wake")


def words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']|_", " ", text.lower()).replace("'", "").split())


def wer(reference: str, heard: str) -> float:
    return float(jiwer.wer(words(reference), words(heard) or "<nothing>"))


def encode(pcm: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Mono int16 → the bytes of an audio file in another container, encoded with av."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, AudioStream) and stream.codec_context.format is not None
        context = stream.codec_context
        resampler = av.AudioResampler(
            format=context.format.name, layout="mono", rate=rate, frame_size=context.frame_size or None
        )
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for piece in resampler.resample(frame) + resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def transcribe(server: ServerProcess, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/api/transcribe", files={"file": (name, data)}, timeout=120)


def synthesize(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/synthesize", json=body, timeout=120)


def read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2"), wav.getframerate()


@pytest.fixture(scope="module")
def jfk(manifest: list[dict[str, str]], eval_dir: Path) -> tuple[bytes, str, float]:
    row = next(r for r in manifest if r["id"] == "jfk")
    path = eval_dir / row["file"]
    return path.read_bytes(), row["transcript"], float(row["duration_s"])


# --- health ---------------------------------------------------------------------------------


def test_healthz_ok_with_every_stage_ready(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/healthz", timeout=10)
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok", health
    assert health["problems"] == []
    assert health["version"] == __version__
    assert set(health["stages"]) == set(STAGES)
    assert all(health["stages"][name]["ready"] for name in STAGES), health
    stages = health["stages"]
    assert stages["stt"]["model"] == "whisper-tiny.en"
    assert stages["llm"]["backend"] == "embedded"
    assert stages["tts"]["voice"] == "en_US-joe-medium"
    assert stages["wake"]["enabled"] is False


async def test_healthz_counts_open_realtime_sessions(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

        async def sessions() -> int:
            return int((await client.get("/healthz")).json()["sessions"])

        before = await sessions()
        async with connect(server.ws_url) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert await sessions() == before + 1
        deadline = time.monotonic() + 15
        while await sessions() != before and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await sessions() == before


async def test_healthz_is_503_starting_until_the_models_are_loaded() -> None:
    # Without its lifespan the app has no engines yet: the state a loading server is in.
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        health = await client.get("/healthz")
        voices = await client.get("/api/voices")
    assert health.status_code == 503
    assert health.json()["status"] == "starting"
    assert health.json()["stages"] is None
    assert health.headers["retry-after"]
    assert voices.status_code == 503
    assert "still loading" in voices.json()["detail"]


async def test_loop_lag_is_watched_once_the_models_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading holds the loop (imports, model sessions built); the lag /healthz reports is about serving.
    async def close() -> None:
        pass

    async def load(*args: Any, **kwargs: Any) -> SimpleNamespace:
        await asyncio.sleep(0.02)  # loading awaits models built on threads, and between them holds the loop
        time.sleep(0.3)
        return SimpleNamespace(load_s={}, close=close)

    monkeypatch.setattr(Engines, "load", load)
    app = create_app(Settings.model_validate({"trace": {"prometheus": False}}))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.05)
        assert app.state.engines is not None
        assert app.state.loop_lag.max_ms < 150


class FakeLlmServer:
    """An OpenAI-compatible /v1/models on a given port, recording what it was asked."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("Authorization", "")))
                body = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeLlmServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def llm_port() -> int:
    return free_port()  # nothing listens here until a test starts FakeLlmServer on it


@pytest.fixture(scope="module")
def api_key() -> str:
    return f"sk-voxloop-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory, llm_port: int, api_key: str) -> Iterator[ServerProcess]:
    env = {
        "VOXLOOP_LLM__BACKEND": "openai",
        "VOXLOOP_LLM__BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
        "OPENAI_API_KEY": api_key,
    }
    with running_server(tmp_path_factory.mktemp("openai_server") / "server.log", env) as process:
        yield process


def test_healthz_degraded_names_the_unreachable_llm_then_recovers(
    openai_server: ServerProcess, llm_port: int, api_key: str
) -> None:
    health = httpx.get(f"{openai_server.url}/healthz", timeout=10).json()
    assert health["status"] == "degraded"
    llm = health["stages"]["llm"]
    assert (llm["ready"], llm["backend"], llm["base_url"]) == (False, "openai", f"http://127.0.0.1:{llm_port}/v1")
    assert "connection refused" in llm["reason"] and str(llm_port) in llm["reason"]
    assert health["problems"] == [f"llm: {llm['reason']}"]
    assert all(health["stages"][name]["ready"] for name in STAGES if name != "llm")

    with FakeLlmServer(llm_port) as fake:
        deadline = time.monotonic() + 20
        while health["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
            health = httpx.get(f"{openai_server.url}/healthz", timeout=10).json()
        assert health["status"] == "ok", health
        assert health["stages"]["llm"]["ready"] is True
        assert fake.requests[-1] == ("/v1/models", f"Bearer {api_key}")
        # The probe's answer is cached: a burst of health checks costs the LLM server at most one call.
        probes = len(fake.requests)
        for _ in range(5):
            assert httpx.get(f"{openai_server.url}/healthz", timeout=10).json()["status"] == "ok"
        assert len(fake.requests) - probes <= 1


def test_config_is_public_and_never_shows_the_api_key(openai_server: ServerProcess, api_key: str) -> None:
    config = httpx.get(f"{openai_server.url}/api/config", timeout=10)
    assert config.status_code == 200
    body = config.json()
    assert body["llm"]["backend"] == "openai"
    assert body["llm"]["api_key_env"] == "OPENAI_API_KEY"  # the variable's name is fine, its value is not
    assert body["stt"]["model"] == "whisper-tiny.en"
    assert "assets" not in body and "trace" not in body  # local paths stay private
    for path in ("/api/config", "/healthz", "/api/voices", "/openapi.json"):
        assert api_key not in httpx.get(f"{openai_server.url}{path}", timeout=10).text, path
    assert api_key not in openai_server.log()


# --- transcribe -----------------------------------------------------------------------------

CONTAINERS = [("flac", "flac"), ("ogg", "libopus"), ("mp3", "libmp3lame"), ("ipod", "aac")]


def test_transcribe_a_wav_recording(server: ServerProcess, jfk: tuple[bytes, str, float]) -> None:
    data, transcript, duration_s = jfk
    response = transcribe(server, "jfk.wav", data)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["rejected_reason"] is None
    assert result["language"] == "en"
    assert result["duration_s"] == pytest.approx(duration_s, abs=0.05)
    assert wer(transcript, result["text"]) <= 0.15, result["text"]
    assert "fellow americans" not in server.log().lower()  # the user's words never reach the log


@pytest.mark.parametrize(("container", "codec"), CONTAINERS)
def test_transcribe_other_containers(
    server: ServerProcess, eval_dir: Path, jfk: tuple[bytes, str, float], container: str, codec: str
) -> None:
    _, transcript, duration_s = jfk
    pcm, rate = read_wav(eval_dir / "audio" / "jfk.wav")
    data = encode(pcm, rate, container, codec)
    response = transcribe(server, f"jfk.{container}", data)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["duration_s"] == pytest.approx(duration_s, abs=0.15)  # codecs pad a frame or two
    assert wer(transcript, result["text"]) <= 0.15, result["text"]


def _corrupt(wav: bytes) -> bytes:
    return os.urandom(64) + wav[64:]  # a real recording whose header is destroyed


@pytest.mark.parametrize(
    ("name", "make", "status", "says"),
    [
        ("corrupt.wav", _corrupt, 415, "cannot decode 'corrupt.wav' as audio"),
        ("empty.wav", lambda _: b"", 400, "'empty.wav' is empty"),
        ("notes.wav", lambda _: b"these are my meeting notes, not a recording\n" * 50, 415, "cannot decode"),
        ("header_only.wav", lambda wav: wav[:44], 415, "cannot decode"),
    ],
)
def test_transcribe_rejects_what_is_not_audio(
    server: ServerProcess,
    jfk: tuple[bytes, str, float],
    name: str,
    make: Any,
    status: int,
    says: str,
) -> None:
    response = transcribe(server, name, make(jfk[0]))
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert says in detail
    assert "upload a recording FFmpeg reads" in detail  # says what to do, too
    # The server goes on answering, and still transcribes.
    assert httpx.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"


def test_transcribe_rejects_bad_requests(server: ServerProcess) -> None:
    no_file = httpx.post(f"{server.url}/api/transcribe", data={"other": "x"}, files={"x": ("a", b"1")}, timeout=30)
    assert no_file.status_code == 400
    assert "field 'file'" in no_file.json()["detail"]
    not_form = httpx.post(f"{server.url}/api/transcribe", json={"file": "jfk.wav"}, timeout=30)
    assert not_form.status_code == 415
    assert "multipart/form-data" in not_form.json()["detail"]


def test_transcribe_limits_size_and_length(server: ServerProcess) -> None:
    too_big = transcribe(server, "big.wav", bytes(26 * 1024 * 1024))
    assert too_big.status_code == 413
    assert "larger than 25 MB" in too_big.json()["detail"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(30):
            yield bytes(1024 * 1024)
        yield b"\r\n--b--\r\n"

    streamed = httpx.post(
        f"{server.url}/api/transcribe",
        content=chunked(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert streamed.status_code == 413

    six_minutes = encode(np.zeros(16000 * 360, dtype=np.int16), 16000, "ogg", "libopus")  # small, but too long
    too_long = transcribe(server, "long.ogg", six_minutes)
    assert too_long.status_code == 413
    assert "the limit is 300 s" in too_long.json()["detail"]
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


# --- synthesize and voices ------------------------------------------------------------------

SENTENCE = "Please bring the green umbrella to the kitchen before noon."


@pytest.mark.parametrize("rate", [None, 16000, 48000])
def test_synthesize_speaks_text_whisper_understands(server: ServerProcess, rate: int | None) -> None:
    voices = httpx.get(f"{server.url}/api/voices", timeout=10).json()
    voice = voices["voices"][0]
    assert voices["default"] == voice["name"] == "en_US-joe-medium"
    assert (voice["engine"], voice["status"]) == ("piper", "ready")

    body: dict[str, Any] = {"text": SENTENCE, "voice": voice["name"]} | ({"rate": rate} if rate else {})
    response = synthesize(server, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    pcm, wav_rate = read_wav_bytes(response.content)
    assert wav_rate == (rate or voice["sample_rate"])
    assert 1.5 < len(pcm) / wav_rate < 8.0
    assert np.abs(pcm.astype(np.int32)).max() > 1000  # speech, not silence

    # Piper samples its prosody (noise_scale 0.667), and about one take in ninety is misheard
    # ("Play spring McGreen umbrella ..."); a fresh second take tells an unlucky sample from a broken path.
    heard = [transcribe(server, "speech.wav", response.content).json()["text"]]
    if wer(SENTENCE, heard[0]) > 0.2:
        again = synthesize(server, body)
        heard.append(transcribe(server, "speech.wav", again.content).json()["text"])
    assert min(wer(SENTENCE, text) for text in heard) <= 0.2, heard
    assert "green umbrella" not in server.log()  # text to speak is not logged either


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 2001}, "text"),
        ({"text": 42}, "text"),
        ({"text": "hello", "rate": 8000}, "rate"),
        ({"text": "hello", "speed": 2}, "speed"),
    ],
)
def test_synthesize_rejects_bad_bodies(server: ServerProcess, body: dict[str, Any], field: str) -> None:
    response = synthesize(server, body)
    assert response.status_code == 422, response.text
    assert field in {str(part) for error in response.json()["errors"] for part in error["loc"]}
    assert field in response.json()["detail"]  # one readable sentence too


def test_synthesize_unknown_voice_and_unspeakable_text(server: ServerProcess) -> None:
    unknown = synthesize(server, {"text": "hello", "voice": "darth"})
    assert unknown.status_code == 404
    assert "'darth'" in unknown.json()["detail"] and "en_US-joe-medium" in unknown.json()["detail"]
    not_json = httpx.post(
        f"{server.url}/api/synthesize", content=b"hello", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    nothing = synthesize(server, {"text": "..."})
    assert nothing.status_code == 422
    assert "nothing the voice can speak" in nothing.json()["detail"]


# --- docs -----------------------------------------------------------------------------------


def test_openapi_lists_every_endpoint_and_docs_serve_html(server: ServerProcess) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    paths = spec["paths"]
    for path, method in [
        ("/healthz", "get"),
        ("/api/config", "get"),
        ("/api/transcribe", "post"),
        ("/api/synthesize", "post"),
        ("/api/voices", "get"),
    ]:
        assert method in paths.get(path, {}), path
    upload = paths["/api/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"]
    synth = paths["/api/synthesize"]["post"]
    assert synth["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SynthesizeRequest")
    assert "audio/wav" in synth["responses"]["200"]["content"]
    assert {"Health", "Transcription", "Voices", "PublicConfig"} <= set(spec["components"]["schemas"])

    docs = httpx.get(f"{server.url}/docs", timeout=10)
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"] and "swagger" in docs.text.lower()


def test_public_url_drops_credentials() -> None:
    assert public_url("https://user:pw@llm.example:8443/v1?key=abc") == "https://llm.example:8443/v1"
    assert public_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"
