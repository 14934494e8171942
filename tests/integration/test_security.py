"""Security end to end: a real `voxloop serve` on loopback with `require_auth: always` and tight limits.

Every refusal must say why (HTTP detail, WebSocket close reason or error event) while the server and the
other sessions go on; the API key and minted secrets never reach the log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.integration.servers import ServerProcess, running_server

pytestmark = pytest.mark.integration

KEY = "vx-test-key-5f2c9a71d04e4b8e"
CHROMIUM = Path("/usr/bin/chromium")
MAX_MESSAGE = 65536
ENV = {
    "VOXLOOP_SECURITY__REQUIRE_AUTH": "always",
    "VOXLOOP_API_KEY": KEY,
    "VOXLOOP_LIMITS__MAX_SESSIONS": "3",
    "VOXLOOP_LIMITS__MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
    "VOXLOOP_LIMITS__MAX_TURN_AUDIO_S": "2",
    "VOXLOOP_LIMITS__EVENTS_PER_S": "50",
    "VOXLOOP_LIMITS__EVENT_BURST": "50",
    "VOXLOOP_LIMITS__ABUSE_CLOSE_S": "2",
}
BEARER = {"Authorization": f"Bearer {KEY}"}
minted: list[str] = []  # every secret minted here, for the log check at the end


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("secure") / "server.log", ENV) as process:
        yield process


def minted_secret(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    secret: dict[str, Any] = response.json()
    minted.append(secret["value"])
    return secret


async def amint(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    return minted_secret(await http.post("/v1/realtime/client_secrets", headers=BEARER, json=body or None))


@pytest.fixture
async def http(secure: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as client:
        yield client


async def closed_with(server: ServerProcess, **connect: Any) -> tuple[int, str]:
    """Open the socket and read until the server closes it: (code, reason)."""
    async with websockets.connect(server.ws_url, open_timeout=10, **connect) as ws:
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await read_until_closed(ws)
    received = closed.value.rcvd
    assert received is not None, "the server closed without a close frame"
    return received.code, received.reason


async def read_until_closed(ws: ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def open_session(server: ServerProcess, **connect: Any) -> ClientConnection:
    ws = await websockets.connect(server.ws_url, open_timeout=10, max_size=None, **connect)
    created = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert created["type"] == "session.created", created
    return ws


async def next_of(ws: ClientConnection, kind: str, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if event["type"] == kind:
            return event


async def still_serves(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "Be kind."}}))
    updated = await next_of(ws, "session.updated")
    assert updated["session"]["instructions"] == "Be kind."


# -- authentication -----------------------------------------------------------------------------


async def test_without_the_key_rest_is_401_and_the_socket_closes_1008_with_a_reason(
    secure: ServerProcess, http: httpx.AsyncClient
) -> None:
    for path in ("/api/config", "/api/voices", "/metrics"):
        response = await http.get(path)
        assert response.status_code == 401, (path, response.text)
        assert "Authorization: Bearer" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = await http.get("/api/config", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "wrong" in wrong.json()["detail"]
    assert (await http.get("/healthz")).status_code == 200  # probes need no key
    assert (await http.post("/v1/realtime/client_secrets")).status_code == 401

    code, reason = await closed_with(secure)
    assert code == 1008 and "authentication required" in reason
    code, reason = await closed_with(secure, additional_headers={"Authorization": "Bearer nope"})
    assert code == 1008 and "wrong" in reason
    code, reason = await closed_with(secure, subprotocols=["realtime", "openai-insecure-api-key.nope"])
    assert code == 1008 and "wrong" in reason


async def test_the_bearer_key_opens_rest_and_the_socket(secure: ServerProcess, http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/config", headers=BEARER)).status_code == 200
    assert (await http.get("/metrics", headers=BEARER)).status_code == 200
    ws = await open_session(secure, additional_headers=BEARER)
    try:
        await still_serves(ws)
    finally:
        await ws.close()


async def test_a_minted_secret_cannot_mint_more_and_expires(secure: ServerProcess, http: httpx.AsyncClient) -> None:
    before = time.time()
    secret = await amint(http, expires_after={"anchor": "created_at", "seconds": 1})
    assert before + 1 <= secret["expires_at"] <= time.time() + 2
    again = await http.post("/v1/realtime/client_secrets", headers={"Authorization": f"Bearer {secret['value']}"})
    assert again.status_code == 401 and "cannot mint" in again.json()["detail"]
    capped = await amint(http, expires_after={"seconds": 86400})
    assert capped["expires_at"] <= time.time() + 601  # security.token_ttl_s caps the lifetime
    await asyncio.sleep(max(0.0, secret["expires_at"] - time.time()) + 0.2)
    code, reason = await closed_with(secure, subprotocols=["realtime", f"openai-insecure-api-key.{secret['value']}"])
    assert code == 1008 and "expired" in reason and "client_secrets" in reason


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install chromium")
def test_a_browser_connects_with_a_minted_secret_as_subprotocol(secure: ServerProcess) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"{secure.url}/")  # the server's own origin
            secret = minted_secret(httpx.post(f"{secure.url}/v1/realtime/client_secrets", headers=BEARER))["value"]
            opened = page.evaluate(BROWSER_CONNECT, [secure.ws_url, ["realtime", f"openai-insecure-api-key.{secret}"]])
            refused = page.evaluate(BROWSER_CONNECT, [secure.ws_url, ["realtime"]])
        finally:
            browser.close()
    assert opened == {"protocol": "realtime", "first": "session.created"}, opened
    assert refused["code"] == 1008 and "authentication required" in refused["reason"], refused


BROWSER_CONNECT = """([url, protocols]) => new Promise((resolve) => {
  const ws = new WebSocket(url, protocols);
  ws.onmessage = (m) => { resolve({protocol: ws.protocol, first: JSON.parse(m.data).type}); ws.close(); };
  ws.onclose = (e) => resolve({code: e.code, reason: e.reason});
  setTimeout(() => resolve({timeout: true}), 15000);
})"""


# -- origins ------------------------------------------------------------------------------------


async def test_a_foreign_origin_or_host_is_refused(secure: ServerProcess, http: httpx.AsyncClient) -> None:
    evil = {"Origin": "https://evil.example.com", **BEARER}
    response = await http.get("/api/config", headers=evil)
    assert response.status_code == 403 and "security.allowed_origins" in response.json()["detail"]
    rebound = await http.get("/api/config", headers={"Host": f"rebind.example.com:{secure.port}", **BEARER})
    assert rebound.status_code == 403 and "rebind.example.com" in rebound.json()["detail"]
    code, reason = await closed_with(secure, origin="https://evil.example.com", additional_headers=BEARER)
    assert code == 1008 and "evil.example.com" in reason

    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    allowed = await http.options("/api/synthesize", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    foreign = await http.options("/api/synthesize", headers={**preflight, "Origin": "https://evil.example.com"})
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
    ws = await open_session(secure, origin=f"http://127.0.0.1:{secure.port}", additional_headers=BEARER)
    await ws.close()


# -- limits -------------------------------------------------------------------------------------


async def sessions(server: ServerProcess) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        count: int = (await client.get(f"{server.url}/healthz")).json()["sessions"]
        return count


async def wait_sessions(server: ServerProcess, count: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while await sessions(server) != count:
        assert time.monotonic() < deadline, f"sessions stayed at {await sessions(server)}, not {count}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def three_sessions(secure: ServerProcess) -> AsyncIterator[list[ClientConnection]]:
    await wait_sessions(secure, 0)
    opened = [await open_session(secure, additional_headers=BEARER) for _ in range(3)]
    try:
        yield opened
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))


async def test_a_full_server_closes_1013_while_the_others_go_on(
    secure: ServerProcess, three_sessions: list[ClientConnection]
) -> None:
    code, reason = await closed_with(secure, additional_headers=BEARER)
    assert code == 1013 and "try again later" in reason and "max_sessions" in reason
    async with httpx.AsyncClient(base_url=secure.url, headers=BEARER) as rest:  # a WebRTC call is refused too
        refused = await rest.post("/v1/realtime/calls", content="v=0\r\nm=audio 9\r\n")
    assert refused.status_code == 503 and "max_sessions" in refused.json()["detail"]
    for ws in three_sessions:
        await still_serves(ws)
    await three_sessions.pop().close()
    await wait_sessions(secure, 2)
    ws = await open_session(secure, additional_headers=BEARER)  # room again
    await ws.close()
    assert "session_refused" in secure.log()


def append(pcm_bytes: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm_bytes).decode()})


async def test_giant_messages_get_an_error_and_giant_frames_close_1009(secure: ServerProcess) -> None:
    ws = await open_session(secure, additional_headers=BEARER)
    try:
        await ws.send(append(bytes(MAX_MESSAGE)))  # ~1.33x the limit once in base64
        error = (await next_of(ws, "error"))["error"]
        assert error["code"] == "message_too_big" and str(MAX_MESSAGE) in error["message"]
        await still_serves(ws)
        await ws.send(bytes(MAX_MESSAGE * 5))  # past uvicorn's hard cap (4x)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await next_of(ws, "never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        await ws.close()


async def test_a_manual_turn_buffer_is_bounded(secure: ServerProcess) -> None:
    ws = await open_session(secure, additional_headers=BEARER)
    try:
        manual = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await ws.send(json.dumps({"type": "session.update", "session": manual}))
        await next_of(ws, "session.updated")
        for _ in range(4):  # 4 x 0.5 s at 24 kHz: the 2 s allowed
            await ws.send(append(bytes(24000)))
        await ws.send(append(bytes(24000)))
        error = (await next_of(ws, "error"))["error"]
        assert error["code"] == "input_audio_buffer_full" and "commit or clear" in error["message"]
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await next_of(ws, "input_audio_buffer.cleared")
        await ws.send(append(bytes(24000)))  # room again after the clear
        await still_serves(ws)
    finally:
        await ws.close()


async def test_an_event_flood_is_rate_limited_then_closed_while_others_go_on(secure: ServerProcess) -> None:
    calm = await open_session(secure, additional_headers=BEARER)
    flooder = await open_session(secure, additional_headers=BEARER)
    empty = json.dumps({"type": "input_audio_buffer.append", "audio": ""})
    try:
        for _ in range(200):  # 4x the burst at once
            await flooder.send(empty)
        first = (await next_of(flooder, "error"))["error"]
        await still_serves(calm)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await flood(flooder, empty, seconds=5.0)  # past limits.abuse_close_s (2 s)
        told = await drain_errors(flooder)
        await still_serves(calm)
    finally:
        await calm.close()
        await flooder.close()
    assert first["code"] == "rate_limited" and "50 messages per second" in first["message"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, closed.value
    assert "closing the connection" in closed.value.rcvd.reason
    assert 1 <= len(told) <= 6 and {e["code"] for e in told} == {"rate_limited"}  # about one a second, not one each


async def flood(ws: ClientConnection, message: str, *, seconds: float, per_s: float = 600) -> None:
    for _ in range(round(seconds * per_s)):
        await ws.send(message)
        await asyncio.sleep(1 / per_s)


async def drain_errors(ws: ClientConnection) -> list[dict[str, Any]]:
    """The errors still buffered on a closed connection."""
    found: list[dict[str, Any]] = []
    try:
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == "error":
                found.append(event["error"])
    except websockets.exceptions.ConnectionClosed:
        return found


def test_the_log_never_holds_the_key_or_a_minted_secret(secure: ServerProcess) -> None:
    log = secure.log()
    assert "request_refused" in log and "client_secret_minted" in log  # the tests above left their marks
    assert KEY not in log
    assert minted and not any(secret in log for secret in minted)
    assert "authentication on" in log  # stated at start-up
