"""Start-up, graceful shutdown and restart of a real `voxloop serve` process: sessions told, work stopped,
voices and traces intact."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from tests.integration.servers import ServerProcess, free_port
from tests.voice_clips import SPEECH_CLIP, clip, wav_bytes
from voxloop.client import RealtimeClient, silence
from voxloop.pipeline.audio import decode_audio

pytestmark = pytest.mark.integration

TURN_S = 40.0  # one spoken turn's reply on a busy 2-core machine (typically 2-4 s)


async def test_sigterm_tells_each_session_and_exits_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(free_port(), tmp_path / "server.log")
    try:
        await asyncio.to_thread(server.wait_ready)
        async with websockets.connect(server.ws_url) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert created["type"] == "session.created"
            server.proc.send_signal(signal.SIGTERM)
            messages = await read_until_closed(ws)
            closed = ws.protocol.close_rcvd
        errors = [m["error"] for m in messages if m["type"] == "error"]
        assert [e["code"] for e in errors] == ["session_closed"]
        assert "shutting down" in errors[0]["message"]
        assert closed is not None
        assert closed.code in (1001, 1012)
        # uvicorn re-raises the SIGTERM it caught once shutdown is complete, as a daemon should.
        assert await asyncio.to_thread(server.proc.wait, 30) in (0, -signal.SIGTERM)
    finally:
        if server.proc.poll() is None:
            server.stop()
    log = server.log()
    assert "session_close" in log  # the session's work was wound down before exit
    assert "Application shutdown complete" in log
    assert "Traceback" not in log


async def read_until_closed(ws: websockets.ClientConnection) -> list[dict[str, Any]]:
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    except websockets.ConnectionClosed:
        return messages


def test_the_server_serves_the_page_and_the_api_docs(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert spec["info"]["title"] == "voxloop"


async def test_sigterm_mid_reply_keeps_voices_and_traces_intact_across_a_restart(
    tmp_path: Path, eval_dir: Path, manifest: list[dict[str, str]]
) -> None:
    voices, traces = tmp_path / "voices", tmp_path / "traces.jsonl"
    env = {"VOXLOOP_VOICES__DIR": str(voices), "VOXLOOP_TRACE__JSONL": str(traces)}
    row = next(row for row in manifest if row["id"] == "psphinx_goforward")
    speech = np.concatenate([silence(0.3), decode_audio(eval_dir / row["file"], rate=24000), silence(1.5)])

    first = ServerProcess(free_port(), tmp_path / "first.log", env)
    try:
        await asyncio.to_thread(first.wait_ready)
        upload = {"file": ("me.wav", wav_bytes(clip(eval_dir, SPEECH_CLIP)))}
        async with httpx.AsyncClient(base_url=first.url, timeout=120) as http:
            made = await http.post("/api/voices", data={"name": "kept"}, files=upload)
            assert made.status_code == 201, made.text
            listed = (await http.get("/api/voices")).json()
        async with await RealtimeClient.connect(first.ws_url) as client:
            await client.stream(speech, rate=24000, realtime=False)
            await client.wait_turn(within=TURN_S)  # one whole turn: one trace line
            await client.stream(speech, rate=24000, realtime=False)
            await client.wait_for("response.output_audio.delta", within=TURN_S, since=client.mark)
            first.proc.send_signal(signal.SIGTERM)  # mid-reply
            error = await client.wait_error("session_closed", within=10)
        assert "shutting down" in error["message"]
        assert await asyncio.to_thread(first.proc.wait, 30) in (0, -signal.SIGTERM)
    finally:
        first.stop()
    assert "Traceback" not in first.log()
    records = [json.loads(line) for line in traces.read_text().splitlines()]  # every line whole JSON
    assert len(records) >= 1 and all("voice_to_voice_ms" in r or "spans_ms" in r for r in records)
    assert {p.name for p in voices.iterdir()} == {"voices.yaml", "kept.wav"}  # no temp file left behind

    second = ServerProcess(free_port(), tmp_path / "second.log", env)
    try:
        await asyncio.to_thread(second.wait_ready)
        async with httpx.AsyncClient(base_url=second.url, timeout=30) as http:
            assert (await http.get("/api/voices")).json() == listed
    finally:
        second.stop()
    assert [json.loads(line) for line in traces.read_text().splitlines()] == records
