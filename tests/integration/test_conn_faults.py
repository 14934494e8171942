"""Clients that fail on a real server: each fault ends its work, and /metrics shows nothing left behind.

Every test takes a baseline of what the server holds (sessions, asyncio tasks, threads, WebRTC peer
connections, open fds) after a warm-up that used the same paths, injects one fault, and requires the
server to come back to that baseline within a few seconds, with no traceback in its log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from aiortc import RTCPeerConnection

from tests.integration.servers import ServerProcess, running_server
from tests.voice_clips import LONG_CLIPS, SPEECH_CLIP, clip, wav_bytes
from voxloop.bench.probe import Holdings, settled
from voxloop.client import RealtimeClient, silence
from voxloop.pipeline.audio import decode_audio
from voxloop.server.webrtc import CHANNEL_OPEN_TIMEOUT_S

pytestmark = pytest.mark.integration

TURN_S = 40.0  # one spoken turn's reply on a busy 2-core machine (typically 2-4 s)
SETTLE_S = 10.0  # "within a few seconds", generous for a shared machine
FD_SLACK = 2  # sockets of the scrape itself may still be closing
SEND_TIMEOUT_S = 8.0  # long enough for another session's turn to run while one is stalled
BIG_OUTPUT = {"format": {"type": "audio/pcm", "rate": 48000}}
LINGER_S = 30.0
FORWARD = "psphinx_goforward"  # "go forward ten meters" (2.8 s)


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: a clean baseline, short stall limits, a voices folder of its own."""
    where = tmp_path_factory.mktemp("faults")
    env = {
        "VOXLOOP_LIMITS__SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
        "VOXLOOP_LIMITS__STALLED_LINGER_S": str(LINGER_S),
        "VOXLOOP_LIMITS__SEND_SOCKET_BYTES": "16384",  # one short reply overfills the socket's buffers
        "VOXLOOP_VOICES__DIR": str(where / "voices"),
    }
    with running_server(where / "server.log", env) as process:
        yield process


@pytest.fixture(scope="module")
def speech(eval_dir: Path, manifest: list[dict[str, str]]) -> np.ndarray:
    row = next(row for row in manifest if row["id"] == FORWARD)
    return np.concatenate([silence(0.3), decode_audio(eval_dir / row["file"], rate=24000), silence(1.5)])


async def one_turn(server: ServerProcess, pcm: np.ndarray) -> dict[str, Any]:
    async with await RealtimeClient.connect(server.ws_url) as client:
        await client.wait_for("session.created", within=10)
        await client.stream(pcm, rate=24000, realtime=False)
        done, _ = await client.wait_turn(within=TURN_S)
        return done


async def baseline(server: ServerProcess) -> Holdings:
    """What the server holds at rest (after earlier work has wound down)."""
    await settled(server.url, await Holdings.read(server.url), within=2)
    await asyncio.sleep(0.5)
    return await Holdings.read(server.url)


async def assert_back_to(server: ServerProcess, base: Holdings, fault: str) -> None:
    now, excess = await settled(server.url, base, within=SETTLE_S, fd_slack=FD_SLACK)
    assert not excess, f"after {fault}, the server still holds more than before: {excess} ({now} vs {base})"
    assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.fixture(scope="module")
def warm(faults: ServerProcess, speech: np.ndarray, eval_dir: Path) -> ServerProcess:
    """Every path the faults take has run once, so the model workers, the loop's executor and the
    upload spooler's thread pool have their threads before any baseline is taken."""

    async def warm_up() -> None:
        await one_turn(faults, speech)
        long = wav_bytes(np.concatenate([clip(eval_dir, name) for name in LONG_CLIPS]))  # spooled to disk
        async with httpx.AsyncClient(timeout=120) as http:
            done = await http.post(f"{faults.url}/api/transcribe", files={"file": ("a.wav", long)})
        assert done.status_code == 200, done.text

    asyncio.run(warm_up())
    return faults


# -- realtime sessions ---------------------------------------------------------------------


async def test_a_client_that_vanishes_mid_reply_leaves_nothing_behind(warm: ServerProcess, speech: np.ndarray) -> None:
    base = await baseline(warm)
    client = await RealtimeClient.connect(warm.ws_url)
    await client.wait_for("session.created", within=10)
    await client.stream(speech, rate=24000, realtime=False)
    await client.wait_for("response.output_audio.delta", within=TURN_S)
    assert (await Holdings.read(warm.url)).sessions == base.sessions + 1
    client.ws.transport.abort()  # type: ignore[attr-defined]  # no close frame: the TCP connection just drops
    await client.close()
    await assert_back_to(warm, base, "a client vanished mid-reply")
    assert "session_close" in warm.log()


# -- REST uploads ---------------------------------------------------------------------------


def gone(server: ServerProcess, during: str) -> int:
    """How many times the server logged a client that hung up during `during`."""
    return sum(1 for line in server.log().splitlines() if "client_gone" in line and f"during='{during}'" in line)


def multipart(data: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = "voxloopfaultboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    head = "".join(parts) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def send_and_drop(
    server: ServerProcess,
    path: str,
    body: bytes,
    content_type: str,
    *,
    cut: int | None,
    wait: float = 0.3,
    take_answer: bool = False,
) -> bytes:
    """POST `body` over a raw socket and hang up `wait` s after sending `cut` bytes (None: all of it),
    or once the answer's first bytes came (`take_answer`); returns what was read of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[: len(body) if cut is None else cut])
    await writer.drain()
    await asyncio.sleep(wait)  # the server is reading (or working on) the request now
    answered = await asyncio.wait_for(reader.read(65536), 30) if take_answer else b""
    writer.transport.abort()
    writer.close()
    return answered


@pytest.mark.parametrize("path", ["/api/transcribe", "/api/voices"])
async def test_an_upload_dropped_midway_leaves_nothing_behind(warm: ServerProcess, eval_dir: Path, path: str) -> None:
    body, content_type = multipart(wav_bytes(clip(eval_dir, SPEECH_CLIP)), name="dropped")
    base = await baseline(warm)
    before = gone(warm, "upload")
    await send_and_drop(warm, path, body, content_type, cut=len(body) // 3)
    await assert_back_to(warm, base, f"an upload to {path} dropped midway")
    assert gone(warm, "upload") == before + 1
    assert not (Path(warm.log_path).parent / "voices" / "dropped.wav").exists()


async def test_a_transcription_whose_client_left_is_cancelled(warm: ServerProcess, eval_dir: Path) -> None:
    long = np.concatenate([clip(eval_dir, name) for name in LONG_CLIPS] * 2)  # ~110 s: seconds of Whisper
    body, content_type = multipart(wav_bytes(long))
    base = await baseline(warm)
    before = gone(warm, "processing")
    await send_and_drop(warm, "/api/transcribe", body, content_type, cut=None)
    await assert_back_to(warm, base, "a transcription's client left")
    assert gone(warm, "processing") == before + 1, "the server did not notice the client leaving mid-transcription"


# -- WebRTC signalling ------------------------------------------------------------------------


async def sdp_offer() -> str:
    pc = RTCPeerConnection()
    try:
        pc.createDataChannel("oai-events")
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_a_webrtc_offer_dropped_midway_leaves_no_peer_connection(warm: ServerProcess) -> None:
    # (A client gone while the answer is made is caught the same way as a transcription's, but the
    # answer takes milliseconds here, so a test cannot place a disconnect inside it reliably.)
    offer = (await sdp_offer()).encode()
    base = await baseline(warm)
    assert base.peers == 0
    before = gone(warm, "upload")
    await send_and_drop(warm, "/v1/realtime/calls", offer, "application/sdp", cut=len(offer) // 2)
    await assert_back_to(warm, base, "a WebRTC offer dropped midway")
    assert gone(warm, "upload") == before + 1


async def test_a_peer_that_takes_the_answer_and_never_connects_is_freed(warm: ServerProcess) -> None:
    offer = (await sdp_offer()).encode()
    base = await baseline(warm)
    answered = await send_and_drop(warm, "/v1/realtime/calls", offer, "application/sdp", cut=None, take_answer=True)
    assert answered.startswith(b"HTTP/1.1 201"), answered[:200]
    assert (await Holdings.read(warm.url)).peers == base.peers + 1  # the server waits for it to connect ...
    await asyncio.sleep(CHANNEL_OPEN_TIMEOUT_S - 1.0)
    await assert_back_to(warm, base, "a peer took its answer and never connected")  # ... for a bounded time
    assert "rtc_no_channel" in warm.log()


# -- a client that stops reading ---------------------------------------------------------------


async def stalled_client(server: ServerProcess) -> websockets.ClientConnection:
    """A client with a tiny receive window that will never read unless told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    return await websockets.connect(server.ws_url, sock=sock, max_queue=1, compression=None, max_size=None)


async def append_all(ws: websockets.ClientConnection, pcm: np.ndarray) -> None:
    step = 24000 * 20 // 1000
    for offset in range(0, len(pcm), step):
        audio = base64.b64encode(pcm[offset : offset + step].astype("<i2").tobytes()).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))


async def read_to_the_end(ws: websockets.ClientConnection) -> int:
    messages = 0
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
            messages += 1
    except websockets.ConnectionClosed:
        return messages


async def turns_total(server: ServerProcess) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{server.url}/metrics")).text
    return float(re.search(r"^voxloop_turns_total (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


async def test_a_client_that_stops_reading_is_closed_and_others_go_on(warm: ServerProcess, speech: np.ndarray) -> None:
    base = await baseline(warm)
    turns = await turns_total(warm)
    stalled = await stalled_client(warm)
    big_audio = {"type": "session.update", "session": {"type": "realtime", "audio": {"output": BIG_OUTPUT}}}
    await stalled.send(json.dumps(big_audio))  # 48 kHz reply audio: more bytes than the socket buffers hold
    await append_all(stalled, speech)
    sent_at = time.monotonic()
    while await turns_total(warm) < turns + 1:  # its reply is made and waits, unread, to be sent
        assert time.monotonic() < sent_at + TURN_S, "the stalled client's turn was never answered"
        await asyncio.sleep(0.1)

    assert (await Holdings.read(warm.url)).sessions == base.sessions + 1  # still open, stuck on sending ...
    done = await one_turn(warm, speech)  # ... while another session is served as usual
    assert done["response"]["status"] == "completed"

    while (await Holdings.read(warm.url)).sessions > base.sessions:
        assert time.monotonic() < sent_at + TURN_S, "the server kept the session of a client that does not read"
        await asyncio.sleep(0.1)
    closed_after = time.monotonic() - sent_at
    assert "client_not_reading" in warm.log()

    messages = await read_to_the_end(stalled)  # everything queued before the close, then the close frame
    assert messages > 10
    assert stalled.close_code == 1008, (stalled.close_code, stalled.close_reason)
    assert (stalled.close_reason or "").startswith("client is not reading"), stalled.close_reason
    assert closed_after < TURN_S
    await assert_back_to(warm, base, "a client stopped reading")
