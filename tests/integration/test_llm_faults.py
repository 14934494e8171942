"""An LLM server that is down, slow, failing or garbled, behind a real `voxloop serve`.

FaultyLlm is a small OpenAI-compatible server (raw asyncio HTTP/1.1 with keep-alive, on its
own thread and loop) whose behaviour the test switches between turns: ok, 5xx, slow (never
sends a first token), malformed (an SSE event that is not JSON), or down (the port closed).
A real voxloop server with real models talks to it; a real recording is spoken to voxloop over
the realtime WebSocket, and the test checks what the user would hear: the real reply after a
retry, or the apology within the turn's deadline; then the real reply again once the LLM
server is back, on the same connection and a new one, without restarting voxloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.servers import ServerProcess, free_port, running_server
from voxloop.client import ClientError, Event, RealtimeClient, silence
from voxloop.pipeline.audio import decode_audio
from voxloop.stages.llm import FALLBACK_REPLY

pytestmark = pytest.mark.integration

DEADLINE_S = 3.0  # llm.turn_deadline_s for this server
MARGIN_S = 5.0  # TTS and a busy 2-core machine, on top of the deadline
TURN_S = 40.0
CLIP = "psphinx_goforward"  # "go forward ten meters" (2.8 s)
REPLY = "The fault test server is back."
AUDIO = "response.output_audio.delta"


class FaultyLlm:
    """An OpenAI-compatible /v1 on 127.0.0.1:port; `mode` (or the next of `script`) decides each reply."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "ok"
        self.script: list[str] = []  # modes for the next chat requests, before `mode` applies again
        self.chat_requests = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faulty-llm", daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._thread.start()
        self.up()

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def up(self) -> None:
        """Listen again (on the same port)."""
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=5)

    def down(self) -> None:
        """Close the port and every open connection: connecting is refused until up()."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)

    async def _open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request on a kept-alive connection; False when the connection is to end."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode().strip().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        await reader.readexactly(int(headers.get("content-length", "0")))
        method, path = request_line.split()[:2]
        if method == "GET" and path.endswith("/models"):
            await respond(writer, 200, "application/json", [json.dumps({"data": [{"id": "fault-test"}]}).encode()])
            return True
        self.chat_requests += 1
        mode = self.script.pop(0) if self.script else self.mode
        if mode == "5xx":
            body = json.dumps({"error": {"message": "model is loading"}}).encode()
            await respond(writer, 503, "application/json", [body])
        elif mode == "malformed":
            await respond(writer, 200, "text/event-stream", [b"data: {this is not json\n\n"])
        elif mode == "slow":
            await respond(writer, 200, "text/event-stream", [sse({"role": "assistant"})], end=False)
            await reader.read()  # b"" once voxloop gives up and hangs up
            return False
        else:
            words = [REPLY.split(" ")[0]] + [" " + word for word in REPLY.split(" ")[1:]]
            events = [sse({"role": "assistant"}), *(sse({"content": w}) for w in words)]
            events += [sse({}, finish="stop"), b"data: [DONE]\n\n"]
            await respond(writer, 200, "text/event-stream", events)
        return True


def sse(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def respond(
    writer: asyncio.StreamWriter, status: int, content_type: str, parts: list[bytes], *, end: bool = True
) -> None:
    writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
    for part in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
    if end:
        writer.write(b"0\r\n\r\n")
    await writer.drain()


@pytest.fixture(scope="module")
def llm() -> Iterator[FaultyLlm]:
    faulty = FaultyLlm(free_port())
    faulty.start()
    try:
        yield faulty
    finally:
        faulty.stop()


@pytest.fixture(scope="module")
def voxloop(llm: FaultyLlm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "VOXLOOP_LLM__BACKEND": "openai",
        "VOXLOOP_LLM__BASE_URL": f"http://127.0.0.1:{llm.port}/v1",
        "VOXLOOP_LLM__MODEL": "fault-test",
        "VOXLOOP_LLM__TURN_DEADLINE_S": str(DEADLINE_S),
    }
    with running_server(tmp_path_factory.mktemp("llm_faults") / "server.log", env) as process:
        yield process


@pytest.fixture(autouse=True)
def llm_ok(llm: FaultyLlm) -> Iterator[None]:
    """Each test starts (and leaves) the LLM server up and well."""
    llm.up()
    llm.mode, llm.script = "ok", []
    yield
    llm.up()
    llm.mode, llm.script = "ok", []


@pytest.fixture(scope="module")
def speech(eval_dir: Path, manifest: list[dict[str, str]]) -> np.ndarray:
    row = next(row for row in manifest if row["id"] == CLIP)
    pcm = decode_audio(eval_dir / row["file"], rate=24000)
    return np.concatenate([silence(0.3, 24000), pcm, silence(1.5, 24000)])


class Turn:
    """What one spoken turn brought back: the reply's events, the error (if any) and the timings."""

    def __init__(self, client: RealtimeClient, since: int, done: Event) -> None:
        self.client, self.since, self.done = client, since, done
        response_id = done["response"]["id"]
        self.audio_s = len(client.reply_audio(response_id)) / 24000
        self.transcript = done["response"]["output"][0]["content"][0]["transcript"]
        heard = client.find("conversation.item.input_audio_transcription.completed", since=since)
        first_audio = client.find(AUDIO, since=since, where=lambda e: e["response_id"] == response_id)
        assert heard is not None and first_audio is not None, [e["type"] for e in client.events[since:]]
        self.wait_s = first_audio.at - heard.at  # from the question known to the first sound of the answer

    def errors(self) -> list[str]:
        return [str(e["error"]["message"]) for e in self.client.of_type("error", since=self.since)]


async def speak(client: RealtimeClient, speech: np.ndarray, *, failing: bool = False) -> Turn:
    """Say the clip (faster than real time) and wait for the reply to end, and for its error if `failing`."""
    since = client.mark
    await client.stream(speech, realtime=False)
    done = await client.wait_for("response.done", within=TURN_S, since=since)
    if failing:  # the error overtakes the apology's audio on the way out, but do not count on it
        await client.wait_for("error", within=5.0, since=since)
    with contextlib.suppress(ClientError):  # the reply's trace, when it comes, is sent after response.done
        await client.wait_for("voxloop.trace", within=2.0, since=since)
    return Turn(client, since, done)


def assert_real_reply(turn: Turn) -> None:
    assert turn.done["response"]["status"] == "completed"
    assert turn.transcript == REPLY and turn.audio_s > 0.8
    assert turn.errors() == []


def assert_apology(turn: Turn, problem: str) -> str:
    assert turn.transcript == FALLBACK_REPLY and turn.audio_s > 0.5, turn.transcript  # spoken, as audio
    assert turn.wait_s < DEADLINE_S + MARGIN_S, turn.wait_s
    errors = turn.errors()
    assert len(errors) == 1 and errors[0].startswith("llm: ") and problem in errors[0], errors
    return errors[0]


def trace_notes(turn: Turn) -> dict[str, object]:
    traces = turn.client.of_type("voxloop.trace", since=turn.since)
    return dict(traces[0]["trace"].get("notes", {})) if traces else {}


# --- the tests ----------------------------------------------------------------------------------


async def test_a_server_error_is_retried_and_the_real_reply_spoken(
    voxloop: ServerProcess, llm: FaultyLlm, speech: np.ndarray
) -> None:
    llm.script = ["5xx"]
    before = llm.chat_requests
    async with await RealtimeClient.connect(voxloop.ws_url) as client:
        turn = await speak(client, speech)
    assert_real_reply(turn)
    assert llm.chat_requests - before == 2
    assert trace_notes(turn).get("llm_retries") == ["http_5xx"]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{voxloop.url}/metrics", timeout=10)).text
    assert 'voxloop_llm_retries_total{reason="http_5xx"}' in metrics


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("5xx", "answered 503: model is loading (gave up after "),
        ("malformed", "malformed stream from the LLM server at "),
        ("slow", f"no first token within llm.turn_deadline_s = {DEADLINE_S:g} s"),
    ],
)
async def test_a_failing_llm_gets_the_apology_spoken_within_the_deadline(
    voxloop: ServerProcess, llm: FaultyLlm, speech: np.ndarray, mode: str, problem: str
) -> None:
    llm.mode = mode
    before = llm.chat_requests
    async with await RealtimeClient.connect(voxloop.ws_url) as client:
        turn = await speak(client, speech, failing=True)
    assert_apology(turn, problem)
    requests = llm.chat_requests - before
    if mode == "slow":
        assert requests == 1 and turn.wait_s >= DEADLINE_S - 0.5  # it waited for the server, no longer
    else:
        assert 2 <= requests <= 4  # retried with backoff, within the deadline
        assert f"gave up after {requests} attempts" in turn.errors()[0]
        assert trace_notes(turn).get("llm_retries") == ["http_5xx" if mode == "5xx" else "malformed"] * (requests - 1)


async def test_after_an_outage_the_next_turn_works_on_the_same_and_a_new_connection(
    voxloop: ServerProcess, llm: FaultyLlm, speech: np.ndarray
) -> None:
    async with await RealtimeClient.connect(voxloop.ws_url) as client:
        assert_real_reply(await speak(client, speech))  # the connection to the LLM server is now pooled
        llm.down()
        outage = await speak(client, speech, failing=True)
        llm.up()
        recovered = await speak(client, speech)
    async with await RealtimeClient.connect(voxloop.ws_url) as fresh:
        afresh = await speak(fresh, speech)
    assert_apology(outage, "is unreachable (connection refused): start it or set llm.base_url")
    assert_real_reply(recovered)
    assert_real_reply(afresh)
    assert voxloop.proc.poll() is None  # the same voxloop process all along
    assert "The fault test server" not in voxloop.log()  # reply text never reaches the log
