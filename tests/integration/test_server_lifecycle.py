"""Start-up and graceful shutdown of a real `voxloop serve` process."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.integration.servers import ServerProcess, free_port

pytestmark = pytest.mark.integration


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
