"""Local HTTP servers that speak the cloud speech APIs' wire formats, for tests.

One FastAPI app on uvicorn (a real socket on a free loopback port, in a thread) answers:

    POST /v1/audio/speech                     OpenAI: Bearer key; response_format pcm (24 kHz) or wav, streamed
    POST /v1/text-to-speech/{voice}/stream    ElevenLabs: xi-api-key; ?output_format=pcm_<rate>, streamed
    POST /v1/text:synthesize                  Google: X-Goog-Api-Key; JSON with base64 LINEAR16 WAV

Each speaks the same real recording at the rate asked for, so tests can compare samples, and
records what it was sent. Voice "hang" never answers; voice "broken" answers 500.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from voxloop.pipeline.audio import resample
from voxloop.pipeline.frames import PCM16

PIECE = 1001  # odd byte pieces: a sample split across two network reads


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]


@dataclass
class SpeechServer:
    speech: PCM16  # at 16 kHz
    keys: dict[str, str]
    seen: list[Seen] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def at(self, rate: int) -> PCM16:
        return self.speech if rate == 16000 else resample(self.speech, 16000, rate)


def wav_header(rate: int, data_bytes: int) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"LIST"
        + struct.pack("<I", 4)
        + b"INFO"  # a chunk a reader must skip
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def wav_file(pcm: PCM16, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def build_app(state: SpeechServer) -> FastAPI:
    app = FastAPI()

    async def pieces(data: bytes, request: Request) -> AsyncIterator[bytes]:
        try:
            for start in range(0, len(data), PIECE):
                yield data[start : start + PIECE]
                await asyncio.sleep(0.002)
        finally:
            if await request.is_disconnected():
                state.disconnected.set()

    async def record(request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        state.seen.append(Seen(request.url.path, dict(request.headers), dict(request.query_params), body))
        return body

    async def refuse(request: Request, header: str, expected: str, voice: str) -> Response | None:
        if request.headers.get(header) != expected:
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
        if voice == "broken":
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        if voice == "hang":
            await asyncio.sleep(3600)
        return None

    @app.post("/v1/audio/speech")
    async def openai_speech(request: Request) -> Response:
        body = await record(request)
        refused = await refuse(request, "authorization", f"Bearer {state.keys['openai']}", body["voice"])
        if refused is not None:
            return refused
        pcm = state.at(24000).astype("<i2").tobytes()
        data = pcm if body["response_format"] == "pcm" else wav_header(24000, 0xFFFFFFFF) + pcm
        return StreamingResponse(pieces(data, request), media_type="audio/pcm")

    @app.post("/v1/text-to-speech/{voice}/stream")
    async def elevenlabs_speech(voice: str, request: Request) -> Response:
        await record(request)
        refused = await refuse(request, "xi-api-key", state.keys["elevenlabs"], voice)
        if refused is not None:
            return refused
        rate = int(request.query_params["output_format"].removeprefix("pcm_"))
        return StreamingResponse(pieces(state.at(rate).astype("<i2").tobytes(), request), media_type="audio/pcm")

    @app.post("/v1/text:synthesize")
    async def google_speech(request: Request) -> Response:
        body = await record(request)
        refused = await refuse(request, "x-goog-api-key", state.keys["google"], body["voice"].get("name", ""))
        if refused is not None:
            return refused
        rate = int(body["audioConfig"]["sampleRateHertz"])
        content = base64.b64encode(wav_file(state.at(rate), rate)).decode()
        return JSONResponse({"audioContent": content})

    return app


def serve(state: SpeechServer, port: int) -> Iterator[SpeechServer]:
    config = uvicorn.Config(
        build_app(state), host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="speech-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local speech server did not start")
        time.sleep(0.02)
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
