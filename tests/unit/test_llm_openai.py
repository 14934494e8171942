"""The OpenAI-compatible client and the LLM stage against a scripted local HTTP server.

The server speaks HTTP/1.1 with chunked transfer encoding and the OpenAI SSE wire format, and
can misbehave on cue: error statuses, malformed JSON, stalls, or holding the stream open to see
whether the client hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import ConfigError, TransientError
from voxloop.pipeline.frames import (
    ErrorFrame,
    Frame,
    ReplyChunk,
    ReplyDone,
    ReplyText,
    SpeechStarted,
    Transcript,
)
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Message, Session
from voxloop.stages.chunker import ChunkerStage
from voxloop.stages.llm import FALLBACK_REPLY, LlmStage, build_messages, history_start, load_llm
from voxloop.stages.llm.openai_compat import OpenAICompatBackend, SseDecoder, parse_chunk

# No `no_leaked_tasks` here: when a stream stops at [DONE] before the body's last byte, httpx's
# own nested async generators are finalized by the event loop a moment later, as tasks.

T = TypeVar("T")

HI = [{"role": "user", "content": "hi"}]


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict[str, Any]:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def event(data: dict[str, Any] | str, eol: str = "\n") -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}{eol}{eol}".encode()


def sse(*contents: str, done: bool = True) -> list[bytes | float]:
    """A well-formed reply: a role chunk, one chunk per content, a finish chunk, [DONE]."""
    parts: list[bytes | float] = [event(chunk(role="assistant"))]
    parts += [event(chunk(c)) for c in contents]
    parts.append(event(chunk(finish="stop")))
    if done:
        parts.append(event("[DONE]"))
    return parts


@dataclass
class Reply:
    parts: list[bytes | float] = field(default_factory=list)  # bytes to send, or seconds to wait
    status: int = 200
    content_type: str = "text/event-stream"
    hold: bool = False  # after the parts, keep the response open until the client hangs up
    delay_headers_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = 0.0  # the loop's clock when it arrived


class ScriptedServer:
    """Answers each request with the next scripted Reply; records requests and hang-ups."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Request] = []
        self.disconnected = asyncio.Event()
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.strip().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))) or b"{}")
        self.requests.append(Request(request_line.split()[1], headers, body, asyncio.get_running_loop().time()))
        reply = self.replies.pop(0) if self.replies else Reply(sse("ok"))
        await asyncio.sleep(reply.delay_headers_s)
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.status} X\r\ncontent-type: {reply.content_type}\r\n{extra}"
            "transfer-encoding: chunked\r\nconnection: close\r\n\r\n".encode()
        )
        for part in reply.parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
                continue
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        if reply.hold:
            await reader.read()  # returns b"" once the client closes the connection
            self.disconnected.set()
            return
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


def settings_for(server: ScriptedServer, **overrides: Any) -> LlmSettings:
    values: dict[str, Any] = {
        "backend": "openai",
        "model": "test-model",
        "base_url": server.url,
        "api_key_env": "VOXLOOP_TEST_KEY",
        "first_token_timeout_s": 5.0,
        "total_timeout_s": 10.0,
        **overrides,
    }
    return LlmSettings(**values)


@pytest.fixture
async def backend(server: ScriptedServer) -> AsyncIterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(settings_for(server), env={})
    yield client
    await client.close()


async def collect(client: OpenAICompatBackend, messages: list[dict[str, str]] = HI) -> list[str]:
    return [delta async for delta in client.stream(messages, max_tokens=32, temperature=0.2)]


async def drain(items: AsyncIterator[T], into: list[T]) -> None:
    """Append each item to `into`, so a test can see what came before an exception."""
    async for item in items:
        into.append(item)


# --- the wire format ------------------------------------------------------------------------


async def test_a_normal_stream_yields_each_delta(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    server.replies.append(Reply(sse("Hello", " there", "!")))
    messages = [{"role": "system", "content": "be brief"}, *HI]
    assert await collect(backend, messages) == ["Hello", " there", "!"]
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "test-model",
        "messages": messages,
        "stream": True,
        "max_tokens": 32,
        "temperature": 0.2,
    }
    assert "authorization" not in request.headers


async def test_the_stream_ends_at_done_even_if_the_server_keeps_it_open(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    # Anything after [DONE] is ignored, and the client does not wait for the server to close.
    server.replies.append(Reply([*sse("a", "b"), event("not json at all")], hold=True))
    assert await asyncio.wait_for(collect(backend), 5) == ["a", "b"]
    await asyncio.wait_for(server.disconnected.wait(), 5)


async def test_a_finish_reason_without_done_is_a_complete_reply(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    server.replies.append(Reply(sse("a", "b", done=False)))
    assert await collect(backend) == ["a", "b"]


async def test_a_stream_cut_short_is_an_error(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    server.replies.append(Reply([event(chunk("a")), event(chunk("b"))]))
    with pytest.raises(TransientError, match="ended the stream before the reply was finished"):
        await collect(backend)


async def test_keepalives_comments_and_crlf_are_tolerated(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    usage = {"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}}
    parts: list[bytes | float] = [
        b": keepalive\r\n\r\n",
        event(chunk(role="assistant"), eol="\r\n"),
        b"event: message\r\nid: 7\r\n" + event(chunk("Hel"), eol="\r\n"),
        b": ping\n\n",
        # one event split across two network writes, in the middle of a line
        event(chunk("lo"))[:9],
        event(chunk("lo"))[9:],
        event(usage),
        event(chunk(finish="stop"), eol="\r\n"),
        b"data: [DONE]\r\n\r\n",
    ]
    server.replies.append(Reply(parts))
    assert await collect(backend) == ["Hel", "lo"]


async def test_a_server_error_names_the_status_and_the_servers_message(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    body = json.dumps({"error": {"message": "model crashed", "type": "server_error"}}).encode()
    server.replies.append(Reply([body], status=500, content_type="application/json"))
    with pytest.raises(TransientError, match=r"answered 500: model crashed"):
        await collect(backend)
    server.replies.append(Reply([b"<html>Bad gateway</html>"], status=502, content_type="text/html"))
    with pytest.raises(TransientError, match=r"answered 502: <html>Bad gateway</html>"):
        await collect(backend)


async def test_not_found_points_at_the_base_url(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    server.replies.append(Reply([b"Not Found"], status=404, content_type="text/plain"))
    with pytest.raises(TransientError, match=r"answered 404 \(Not Found\): check llm.base_url"):
        await collect(backend)


async def test_a_json_answer_instead_of_a_stream_is_an_error(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    server.replies.append(Reply([b'{"choices": []}'], content_type="application/json"))
    with pytest.raises(TransientError, match="instead of an event stream"):
        await collect(backend)


async def test_malformed_json_is_an_error(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    server.replies.append(Reply([event(chunk("ok")), b"data: {not json\n\n"]))
    deltas: list[str] = []
    with pytest.raises(TransientError, match=r"malformed stream .*'\{not json' is not JSON"):
        await drain(backend.stream(HI, max_tokens=8, temperature=0), deltas)
    assert deltas == ["ok"]


async def test_an_error_event_mid_stream_is_an_error(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    server.replies.append(Reply([event(chunk("ok")), event({"error": {"message": "out of memory"}})]))
    with pytest.raises(TransientError, match="failed mid-reply: out of memory"):
        await collect(backend)


async def test_connection_refused_says_to_start_the_server() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    client = OpenAICompatBackend(LlmSettings(backend="openai", base_url=url), env={})
    try:
        with pytest.raises(TransientError) as caught:
            await collect(client)
    finally:
        await client.close()
    assert str(caught.value) == (
        f"LLM server at {url} is unreachable (connection refused): start it or set llm.base_url"
    )


@pytest.mark.parametrize("stall", ["before_headers", "after_headers"])
async def test_no_first_token_in_time_is_a_timeout(server: ScriptedServer, stall: str) -> None:
    if stall == "before_headers":
        server.replies.append(Reply(sse("late"), delay_headers_s=3.0))
    else:
        server.replies.append(Reply([event(chunk(role="assistant")), 3.0, *sse("late")]))
    client = OpenAICompatBackend(settings_for(server, first_token_timeout_s=0.3), env={})
    try:
        with pytest.raises(TransientError, match=r"no first token within 0.3 s"):
            await collect(client)
    finally:
        await client.close()


async def test_a_reply_that_takes_too_long_is_a_timeout(server: ScriptedServer) -> None:
    slow: list[bytes | float] = []
    for word in ["one", " two", " three", " four", " five"]:
        slow += [event(chunk(word)), 0.2]
    server.replies.append(Reply(slow))
    client = OpenAICompatBackend(settings_for(server, first_token_timeout_s=0.3, total_timeout_s=0.5), env={})
    deltas: list[str] = []
    try:
        with pytest.raises(TransientError, match=r"not finished within 0.5 s"):
            await drain(client.stream(HI, max_tokens=8, temperature=0), deltas)
    finally:
        await client.close()
    assert deltas[:2] == ["one", " two"]  # later tokens get the whole-reply deadline, not the first-token one
    assert len(deltas) < 5


async def test_the_api_key_is_sent_from_the_named_variable_and_never_logged(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = OpenAICompatBackend(settings_for(server), env={"VOXLOOP_TEST_KEY": "sk-secret-123"})
    try:
        assert await collect(client) == ["ok"]
    finally:
        await client.close()
    assert server.requests[0].headers["authorization"] == "Bearer sk-secret-123"
    assert caplog.records, "expected the request to be logged"
    assert all("sk-secret-123" not in record.getMessage() + str(record.__dict__) for record in caplog.records)


async def test_cancelling_mid_stream_closes_the_connection(server: ScriptedServer) -> None:
    server.replies.append(Reply([event(chunk("one")), event(chunk(" two"))], hold=True))
    client = OpenAICompatBackend(settings_for(server), env={})
    got: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for delta in client.stream(HI, max_tokens=8, temperature=0):
            got.append(delta)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(two.wait(), 5)
        assert not server.disconnected.is_set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 5)  # the server saw the hang-up
    finally:
        await client.close()
    assert got == ["one", " two"]


async def test_leaving_the_stream_early_closes_the_connection(server: ScriptedServer) -> None:
    server.replies.append(Reply([event(chunk("one")), event(chunk(" two"))], hold=True))
    client = OpenAICompatBackend(settings_for(server), env={})
    deltas = client.stream(HI, max_tokens=8, temperature=0)
    try:
        assert await anext(deltas) == "one"
        await deltas.aclose()  # what a consumer does when it stops reading (LlmStage does)
        await asyncio.wait_for(server.disconnected.wait(), 5)
    finally:
        await client.close()


@pytest.mark.parametrize("slots", [1, 2])
async def test_busy_means_every_server_slot_is_streaming(server: ScriptedServer, slots: int) -> None:
    server.replies += [Reply([event(chunk("one"))], hold=True) for _ in range(2)]
    client = OpenAICompatBackend(settings_for(server, server_slots=slots), env={})
    first, second = (client.stream(HI, max_tokens=8, temperature=0) for _ in range(2))
    try:
        assert not client.busy()
        assert await anext(first) == "one"
        assert client.busy() == (slots == 1)
        assert await anext(second) == "one"
        assert client.busy()
        await first.aclose()
        assert client.busy() == (slots == 1)
        await second.aclose()
        assert not client.busy()
    finally:
        await client.close()


async def test_prefill_asks_for_one_token_only_when_the_server_keeps_a_prompt_cache(server: ScriptedServer) -> None:
    answer = b'{"choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "length"}]}'
    server.replies += [Reply([answer], content_type="application/json"), Reply([b"{}"], status=503)]
    plain = OpenAICompatBackend(settings_for(server), env={})
    caching = OpenAICompatBackend(settings_for(server, server_prefill=True), env={})
    try:
        await plain.prefill(HI)
        assert server.requests == []  # a cloud API caches by itself and bills every request
        await caching.prefill(HI)
        assert server.requests[0].body == {"model": "test-model", "messages": HI, "max_tokens": 1, "temperature": 0.0}
        await caching.prefill(HI)  # a failed prefill is only logged: the turn's request will read the prompt
        assert len(server.requests) == 2
    finally:
        await plain.close()
        await caching.close()


@pytest.mark.parametrize("pin", [True, False])
async def test_pinned_conversations_keep_their_own_server_slot(server: ScriptedServer, pin: bool) -> None:
    settings = settings_for(server, server_slots=2, server_prefill=True, pin_slots=pin)
    client = OpenAICompatBackend(settings, env={})
    stages = {name: LlmStage(Session(session_id=name), settings, client) for name in "abc"}

    async def turn(name: str) -> None:
        stage = stages[name]
        await run_stage(stage, stage.session.make(SpeechStarted))  # the prefill while they speak
        stage.session.user_said(f"question from {name}")
        await run_stage(stage, stage.session.make(Transcript, text=f"question from {name}"))
        stage.session.reply_finished("ok")

    try:
        for name in "abab":
            await turn(name)
        await turn("c")  # a third conversation on two slots: takes the one least recently active
        await turn("b")
        slots = [r.body.get("id_slot") for r in server.requests]
        if not pin:
            assert slots == [None] * 12  # a cloud API would refuse the field
            return
        prefills = [r for r in server.requests if r.body["max_tokens"] == 1]
        assert len(prefills) == 6  # every request carries the slot, not only the replies
        assert slots == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    finally:
        await client.close()


async def test_load_llm_builds_the_openai_backend_without_touching_the_network(
    server: ScriptedServer,
) -> None:
    backend = load_llm(settings_for(server), store=None)  # type: ignore[arg-type]  # unused for openai
    try:
        assert isinstance(backend, OpenAICompatBackend) and backend.name == "openai"
        assert server.requests == []
    finally:
        await backend.close()


def test_a_base_url_without_a_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"llm.base_url = '127.0.0.1:8080/v1': must be an http\(s\) URL"):
        OpenAICompatBackend(LlmSettings(backend="openai", base_url="127.0.0.1:8080/v1"), env={})


def test_sse_decoder_joins_data_lines_and_skips_the_rest() -> None:
    decoder = SseDecoder()
    lines = [": comment", "event: message", "data: a", "data:b", "id: 3", "", "data: last"]
    assert [decoder.feed(line) for line in lines] == [None, None, None, None, None, "a\nb", None]
    assert decoder.end() == "last"
    assert parse_chunk(json.dumps(chunk("x", finish="stop")), "s").finished
    assert not parse_chunk(json.dumps(chunk("x", finish="stop")), "s").cut_off
    assert parse_chunk(json.dumps(chunk(finish="length")), "s").cut_off
    assert parse_chunk(" [DONE]", "s").finished


# --- the stage ------------------------------------------------------------------------------


def test_build_messages_keeps_the_last_messages_and_ends_with_the_user() -> None:
    history = [Message("user", f"u{i}") if i % 2 == 0 else Message("assistant", f"a{i}") for i in range(5)]
    assert build_messages("sys", history, 4, "u4") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "u4"},
    ]
    assert build_messages("", history, 0, "u4") == [{"role": "user", "content": "u4"}]
    assert build_messages("sys", history[:2], 4, "new")[-1] == {"role": "user", "content": "new"}


@pytest.mark.parametrize("earlier", range(12))
def test_a_question_not_yet_in_history_gets_the_window_of_the_final_request(earlier: int) -> None:
    """A speculative reply or a prefill asks before the question is in history: its prompt must
    be the final request's, window included, or it would fill the cache with another prompt."""
    history = [Message("user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(earlier)]
    if history and history[-1].role == "user":
        history.append(Message("assistant", "reply"))
    early = build_messages("sys", history, 6, "question?")
    final = build_messages("sys", [*history, Message("user", "question?")], 6, "question?")
    assert early == final


def test_the_history_window_moves_in_half_steps_so_the_prompt_keeps_its_beginning() -> None:
    starts = [history_start(length, 12) for length in range(10, 26)]
    # up to 12 messages all of them; then the start jumps by 6, holding 6 to 12 messages
    assert starts == [0, 0, 0, 6, 6, 6, 6, 6, 6, 12, 12, 12, 12, 12, 12, 18]
    assert all(6 <= length - start <= 12 for length, start in zip(range(13, 26), starts[3:], strict=True))


async def run_stage(stage: LlmStage, frame: Frame) -> list[Frame]:
    return [out async for out in stage.process(frame)]


async def answer(settings: LlmSettings, session: Session, question: str) -> list[Frame]:
    """The LLM stage's frames for one final transcript, from a client to `settings.base_url`."""
    client = OpenAICompatBackend(settings, env={})
    try:
        return await run_stage(LlmStage(session, settings, client), session.make(Transcript, text=question))
    finally:
        await client.close()


async def test_the_stage_streams_the_reply_and_marks_the_first_token(server: ScriptedServer) -> None:
    server.replies.append(Reply(sse("", "Paris", " it", " is.")))
    settings = settings_for(server, system_prompt="Be brief.", max_history_messages=2)
    session = Session()
    session.history += [Message("user", "old question"), Message("assistant", "old answer")]
    session.user_said("capital of France?")
    out = await answer(settings, session, "capital of France?")
    assert [(type(f), getattr(f, "text", None)) for f in out] == [
        (Transcript, "capital of France?"),  # passed on first, for the transport to show
        (ReplyText, "Paris"),
        (ReplyText, " it"),
        (ReplyText, " is."),
        (ReplyDone, "Paris it is."),
    ]
    assert "llm_first_token" in session.trace.marks
    assert session.trace.marks["llm_first_token"] <= out[1].t_ns
    assert server.requests[0].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "capital of France?"},
    ]


async def test_a_reply_stopped_by_max_tokens_is_marked_and_kept_to_whole_sentences(server: ScriptedServer) -> None:
    parts = [event(chunk(role="assistant")), event(chunk("It is Paris.")), event(chunk(" It has"))]
    server.replies.append(Reply([*parts, event(chunk(finish="length")), event("[DONE]")]))
    settings = settings_for(server)
    session = Session()
    session.user_said("capital of France?")
    out = await answer(settings, session, "capital of France?")
    assert [f.text for f in out if isinstance(f, ReplyText)] == ["It is Paris.", " It has"]
    done = out[-1]
    assert isinstance(done, ReplyDone) and done.cut_off and done.text == "It is Paris."
    assert session.trace.notes["reply_cut_off"] is True


async def test_the_stage_ignores_partial_transcripts(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    session = Session()
    stage = LlmStage(session, settings_for(server), backend)
    for transcript in (session.make(Transcript, text="capital of", final=False), session.make(Transcript)):
        assert await run_stage(stage, transcript) == [transcript]  # passed on, not answered
    assert server.requests == []


async def test_the_stage_apologises_then_raises_when_the_server_keeps_failing(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    server.replies += [Reply([b"overloaded"], status=503, content_type="text/plain") for _ in range(5)]
    session = Session()
    session.user_said("hello")
    stage = LlmStage(session, settings_for(server, retry_max_attempts=3, retry_backoff_initial_s=0.01), backend)
    out: list[Frame] = []
    with pytest.raises(TransientError, match=r"answered 503: overloaded \(gave up after 3 attempts in "):
        await drain(stage.process(session.make(Transcript, text="hello")), out)
    assert [(type(f), getattr(f, "text", None)) for f in out] == [
        (Transcript, "hello"),
        (ReplyText, FALLBACK_REPLY),
        (ReplyDone, FALLBACK_REPLY),
    ]
    assert "llm_first_token" not in session.trace.marks
    assert len(server.requests) == 3
    assert session.trace.notes["llm_retries"] == ["http_5xx", "http_5xx"]
    assert session.trace.notes["llm_fallback"] == "http_5xx"


async def test_the_stage_retries_a_server_error_and_the_reply_comes_through(
    server: ScriptedServer, backend: OpenAICompatBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server.replies += [Reply([b"loading"], status=503, content_type="text/plain"), Reply(sse("Fine", " thanks."))]
    session = Session()
    session.user_said("secret question")
    stage = LlmStage(session, settings_for(server, retry_backoff_initial_s=0.05), backend)
    out = await run_stage(stage, session.make(Transcript, text="secret question"))
    assert [f.text for f in out if isinstance(f, ReplyDone)] == ["Fine thanks."]
    assert len(server.requests) == 2 and server.requests[0].body == server.requests[1].body
    assert session.trace.notes["llm_retries"] == ["http_5xx"] and "llm_fallback" not in session.trace.notes
    retries = [r for r in caplog.records if getattr(r, "event", None) == "llm_retry"]
    assert [(r.__dict__["attempt"], r.__dict__["reason"]) for r in retries] == [(1, "http_5xx")]
    assert 25 <= retries[0].__dict__["delay_ms"] <= 50  # the first pause, jittered down by at most half
    assert "secret" not in caplog.text  # the user's words never reach the log


async def test_retry_after_from_a_429_is_honoured(server: ScriptedServer, backend: OpenAICompatBackend) -> None:
    limited = Reply([b'{"error": {"message": "slow down"}}'], status=429, content_type="application/json")
    limited.headers["Retry-After"] = "0.4"
    server.replies += [limited, Reply(sse("ok"))]
    session = Session()
    session.user_said("hi")
    stage = LlmStage(session, settings_for(server, retry_backoff_initial_s=0.01), backend)
    out = await run_stage(stage, session.make(Transcript, text="hi"))
    assert [f.text for f in out if isinstance(f, ReplyDone)] == ["ok"]
    assert server.requests[1].at - server.requests[0].at >= 0.38
    assert session.trace.notes["llm_retries"] == ["http_429"]


@pytest.mark.parametrize(("status", "hint"), [(401, "put a valid key"), (404, "check llm.base_url")])
async def test_a_bad_key_or_url_is_said_at_once_without_retrying(
    server: ScriptedServer, backend: OpenAICompatBackend, status: int, hint: str
) -> None:
    server.replies.append(Reply([b'{"error": {"message": "nope"}}'], status=status, content_type="application/json"))
    session = Session()
    session.user_said("hi")
    out: list[Frame] = []
    with pytest.raises(TransientError, match=hint):
        await drain(LlmStage(session, settings_for(server), backend).process(session.make(Transcript, text="hi")), out)
    assert len(server.requests) == 1  # the next reply would have been a good one: it was never asked for
    assert [f.text for f in out if isinstance(f, ReplyText)] == [FALLBACK_REPLY]
    assert "llm_retries" not in session.trace.notes


async def test_a_malformed_stream_before_any_content_is_retried(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    server.replies += [Reply([event(chunk(role="assistant")), b"data: {oops\n\n"]), Reply(sse("ok"))]
    session = Session()
    session.user_said("hi")
    out = await run_stage(LlmStage(session, settings_for(server), backend), session.make(Transcript, text="hi"))
    assert [f.text for f in out if isinstance(f, ReplyDone)] == ["ok"]
    assert session.trace.notes["llm_retries"] == ["malformed"]


async def test_a_reply_cut_off_mid_stream_ends_with_the_apology(
    server: ScriptedServer, backend: OpenAICompatBackend
) -> None:
    server.replies.append(Reply([event(chunk("The answer")), event(chunk(" is")), b"data: {oops\n\n"]))
    session = Session()
    session.user_said("question")  # the next reply would be fine: a retry would repeat "The answer is"
    out: list[Frame] = []
    stage = LlmStage(session, settings_for(server), backend)
    with pytest.raises(TransientError, match="malformed stream"):
        await drain(stage.process(session.make(Transcript, text="question")), out)
    texts = [f.text for f in out if isinstance(f, ReplyText)]
    assert texts == ["The answer", " is", "\n" + FALLBACK_REPLY]
    assert isinstance(out[-1], ReplyDone) and out[-1].text == f"The answer is {FALLBACK_REPLY}"
    assert len(server.requests) == 1 and "llm_retries" not in session.trace.notes


async def test_in_a_graph_a_failure_is_spoken_and_reported(server: ScriptedServer) -> None:
    server.replies.append(Reply([b"boom"], status=500, content_type="text/plain"))
    session = Session()
    settings = settings_for(server, retry_max_attempts=1)
    client = OpenAICompatBackend(settings, env={})
    graph = Graph(session, [LlmStage(session, settings, client), ChunkerStage(session)])
    out: list[Frame] = []
    async with graph:
        await session.user_started_speaking()
        session.user_said("hello")
        await graph.push(session.make(Transcript, text="hello"))
        async for frame in graph.frames():
            out.append(frame)
            if isinstance(frame, ReplyDone):  # after the transcript, the error and the apology's chunks
                break
    await client.close()
    chunks = [f.text for f in out if isinstance(f, ReplyChunk)]
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert " ".join(chunks) == FALLBACK_REPLY  # spoken whole (in two chunks: the first clause is capped)
    assert any(isinstance(f, ReplyDone) for f in out)
    assert len(errors) == 1 and errors[0].stage == "llm" and not errors[0].fatal
    assert "answered 500: boom" in errors[0].message
