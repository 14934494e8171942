"""Streaming chat against any OpenAI-compatible server (OpenAI, llama.cpp, vLLM, Ollama, ...).

One shared httpx.AsyncClient per backend; each reply is a POST to {base_url}/chat/completions
with stream=true, read as server-sent events. Three deadlines guard a reply: the connection
(httpx), the first token and the whole reply (ours, so a server that accepts the connection
but never answers still fails in time). Every failure is an LlmFailure (a TransientError)
whose message says what went wrong and what to do, and whose reason and retryable flag let the
stage's retry policy (retry.py) judge it: 5xx, 408, 429 (with its Retry-After), timeouts,
refused or dropped connections and malformed streams may pass; other 4xx will not.
Leaving the stream early (a barge-in cancels the consumer) closes the HTTP response, so the
server sees the disconnect and can stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import ConfigError
from voxloop.stages.llm.deltas import CUT_OFF
from voxloop.stages.llm.retry import LlmFailure, parse_retry_after, status_failure

log = logging.getLogger(__name__)

T = TypeVar("T")

DONE = "[DONE]"


class SseDecoder:
    """Server-sent events, fed line by line: returns each complete event's data."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:  # a blank line ends the event
            return self.end()
        if line.startswith(":"):  # a comment: servers send these as keepalives
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None  # event:, id:, retry: carry nothing a chat stream needs

    def end(self) -> str | None:
        """The event in progress, if any (for a stream that ends without a blank line)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


class SlotPins:
    """Which of the server's slots each conversation keeps (llm.pin_slots).

    llama-server gives a request the idle slot whose cached prompt shares the most with it, or
    the least recently used one. With several conversations that often takes one that another
    conversation had filled, which is then read again from the start (~1 s for 200 tokens on
    2 busy cores). A pinned conversation's requests name its slot (`id_slot`), so its cache
    stays its own. A new conversation takes a free slot, or else the one whose conversation
    was active least recently (it may have ended: sessions are not told to the backend)."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._pins: OrderedDict[str, int] = OrderedDict()  # least recently active first

    def slot(self, conversation: str) -> int:
        if conversation in self._pins:
            self._pins.move_to_end(conversation)
            return self._pins[conversation]
        taken = set(self._pins.values())
        free = next((slot for slot in range(self._slots) if slot not in taken), None)
        if free is None:
            _, free = self._pins.popitem(last=False)
        self._pins[conversation] = free
        return free


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """What one `chat.completion.chunk` event says: a text delta, and whether it was the last."""

    content: str = ""
    finished: bool = False
    cut_off: bool = False  # finish_reason "length": max_tokens stopped it


def parse_chunk(data: str, server: str) -> ChatChunk:
    """Decode one event's data; raises LlmFailure for anything that is not a chat chunk."""
    if data.strip() == DONE:
        return ChatChunk(finished=True)
    try:
        event = json.loads(data)
    except ValueError:
        raise _malformed(f"malformed stream from the LLM server at {server}: {_head(data)!r} is not JSON") from None
    if not isinstance(event, dict):
        raise _malformed(f"malformed stream from the LLM server at {server}: expected an object, got {_head(data)!r}")
    if "error" in event:
        message = f"the LLM server at {server} failed mid-reply: {_error_text(event['error'])}"
        raise LlmFailure(message, reason="error_event", retryable=True)
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise _malformed(f"malformed stream from the LLM server at {server}: a chunk without choices")
    if not choices:
        return ChatChunk()  # e.g. a usage report
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    if content is not None and not isinstance(content, str):
        raise _malformed(f"malformed stream from the LLM server at {server}: delta content is not text")
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    return ChatChunk(content=content or "", finished=reason is not None, cut_off=reason == "length")


class OpenAICompatBackend:
    """A ChatBackend that streams from an OpenAI-compatible /chat/completions endpoint."""

    name = "openai"

    def __init__(
        self,
        settings: LlmSettings,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base_url = settings.base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"llm.base_url = {settings.base_url!r}: must be an http(s) URL such as http://127.0.0.1:8080/v1"
            )
        self.base_url = base_url
        self.model = settings.model
        self._settings = settings
        env = os.environ if env is None else env
        key = env.get(settings.api_key_env, "") if settings.api_key_env else ""
        headers = {"Accept": "text/event-stream"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # httpx's read timeout is only a backstop: our own deadlines are tighter.
        timeout = httpx.Timeout(settings.total_timeout_s, connect=settings.connect_timeout_s)
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout, transport=transport)
        self._open = 0  # replies streaming now
        self._pins = SlotPins(settings.server_slots) if settings.pin_slots else None

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        conversation: str | None = None,
    ) -> AsyncGenerator[str, None]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self._slot(conversation),
        }
        self._open += 1  # busy() while every slot streams: a speculative reply would queue behind them
        try:
            deadlines = _Deadlines(self._settings, self.base_url)
            request = self._client.build_request("POST", f"{self.base_url}/chat/completions", json=body)
            log.info("llm request", extra={"event": "llm_request", "backend": self.name, "messages": len(messages)})
            with self._http_errors():
                response = await deadlines.wait(self._client.send(request, stream=True))
            deltas, contents = 0, self._contents(response, deadlines)
            try:
                await self._check_response(response, deadlines)
                async for content in contents:
                    deltas += 1
                    deadlines.got_token()
                    yield content
            finally:
                # Closed here, not left to the garbage collector: before the end of the stream,
                # closing the response closes the connection, which tells the server to stop.
                await contents.aclose()
                await response.aclose()
            log.info(
                "llm reply done",
                extra={"event": "llm_done", "backend": self.name, "deltas": deltas, **deadlines.timings()},
            )
        finally:
            self._open -= 1

    def busy(self) -> bool:
        return self._open >= self._settings.server_slots

    async def prefill(
        self,
        messages: list[dict[str, str]],
        *,
        after: list[dict[str, str]] | None = None,
        conversation: str | None = None,
    ) -> None:
        """With llm.server_prefill, a 1-token request that leaves `messages` in the server's prompt
        cache (llama-server keeps each slot's, and gives a request the slot whose cache it shares
        most with), so the turn's request reads only the new words. Best effort: a failure is
        logged and forgotten. Without it nothing: an extra request would only queue or cost."""
        if not self._settings.server_prefill:
            return
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            **self._slot(conversation),
        }
        started = time.perf_counter()
        try:
            response = await self._client.post(f"{self.base_url}/chat/completions", json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.info("llm prefill failed", extra={"event": "llm_prefill_failed", "error": type(exc).__name__})
            return
        log.debug("llm prefill", extra={"event": "llm_prefill", "ms": round((time.perf_counter() - started) * 1000)})

    async def close(self) -> None:
        await self._client.aclose()

    def _slot(self, conversation: str | None) -> dict[str, int]:
        """The request's llama-server slot field, when conversations are pinned to slots."""
        if self._pins is None or conversation is None:
            return {}
        return {"id_slot": self._pins.slot(conversation)}

    async def _check_response(self, response: httpx.Response, deadlines: _Deadlines) -> None:
        if response.status_code >= 400:
            with self._http_errors():
                text = (await deadlines.wait(response.aread())).decode("utf-8", "replace")
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise status_failure(response.status_code, self._status_message(response.status_code, text), retry_after)
        content_type = response.headers.get("content-type", "")
        if "text/event-stream" not in content_type:
            raise LlmFailure(
                f"the LLM server at {self.base_url} answered {content_type or 'no content type'} instead "
                "of an event stream: check that llm.base_url points at an OpenAI-compatible API",
                reason="not_stream",
                retryable=False,
            )

    async def _contents(self, response: httpx.Response, deadlines: _Deadlines) -> AsyncGenerator[str, None]:
        decoder, lines = SseDecoder(), response.aiter_lines()
        try:
            while True:
                with self._http_errors():
                    try:
                        line: str | None = await deadlines.wait(anext(lines))
                    except StopAsyncIteration:
                        line = None
                data = decoder.end() if line is None else decoder.feed(line)
                if data is not None:
                    chunk = parse_chunk(data, self.base_url)
                    if chunk.content:
                        yield chunk.content
                    if chunk.cut_off:
                        yield CUT_OFF
                    if data.strip() == DONE:
                        return
                    deadlines.finished = deadlines.finished or chunk.finished
                if line is None:
                    if deadlines.finished:
                        return  # a server that omits [DONE] after the final chunk
                    raise LlmFailure(
                        f"the LLM server at {self.base_url} ended the stream before the reply was finished",
                        reason="ended_early",
                        retryable=True,
                    )
        finally:
            await _aclose(lines)

    def _status_message(self, status: int, text: str) -> str:
        where = f"the LLM server at {self.base_url}"
        detail = _error_text(_json_or_text(text))
        if status in (401, 403):
            key = self._settings.api_key_env
            return f"{where} refused the request ({status}: {detail}): put a valid key in ${key}"
        if status == 404:
            return f"{where} answered 404 ({detail}): check llm.base_url (it usually ends in /v1) and llm.model"
        return f"LLM server at {self.base_url} answered {status}: {detail}"

    @contextlib.contextmanager
    def _http_errors(self) -> Iterator[None]:
        """Turn httpx's exceptions into LlmFailures that say what to do (all worth a retry)."""
        where = f"LLM server at {self.base_url}"
        try:
            yield
        except httpx.ConnectTimeout:
            raise LlmFailure(
                f"{where} did not accept a connection within {self._settings.connect_timeout_s:g} s: "
                "check that it is running and llm.base_url",
                reason="unreachable",
                retryable=True,
            ) from None
        except httpx.ConnectError as exc:
            message = f"{where} is unreachable ({_reason(exc)}): start it or set llm.base_url"
            raise LlmFailure(message, reason="unreachable", retryable=True) from None
        except httpx.TimeoutException as exc:
            message = f"{where} timed out ({type(exc).__name__}): check its load and log"
            raise LlmFailure(message, reason="timeout", retryable=True) from None
        except httpx.HTTPError as exc:
            message = f"{where} dropped the connection ({_reason(exc)}): check its log"
            raise LlmFailure(message, reason="dropped", retryable=True) from None


class _Deadlines:
    """The first-token and whole-reply deadlines of one request, on the event loop's clock."""

    def __init__(self, settings: LlmSettings, server: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._first_s, self._total_s = settings.first_token_timeout_s, settings.total_timeout_s
        self._server = server
        self._first_token_at: float | None = None
        self.finished = False

    def got_token(self) -> None:
        if self._first_token_at is None:
            self._first_token_at = self._loop.time()

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` until the deadline that applies now; LlmFailure past it."""
        total_at = self._start + self._total_s
        if self._first_token_at is None and self._first_s < self._total_s:
            at, message = self._start + self._first_s, f"no first token within {self._first_s:g} s"
        else:
            at, message = total_at, f"the reply was not finished within {self._total_s:g} s"
        try:
            async with asyncio.timeout_at(at):
                return await awaitable
        except TimeoutError:
            raise LlmFailure(
                f"LLM server at {self._server}: {message}; it may be overloaded, or raise "
                "llm.first_token_timeout_s / llm.total_timeout_s",
                reason="timeout",
                retryable=True,
            ) from None

    def timings(self) -> dict[str, float]:
        now = self._loop.time()
        timings = {"total_ms": round((now - self._start) * 1000, 1)}
        if self._first_token_at is not None:
            timings["first_token_ms"] = round((self._first_token_at - self._start) * 1000, 1)
        return timings


async def _aclose(iterator: AsyncIterator[str]) -> None:
    aclose = getattr(iterator, "aclose", None)  # httpx's line iterators are async generators
    if aclose is not None:
        await aclose()


def _reason(exc: BaseException) -> str:
    """A short cause for a network error: 'connection refused' rather than a stack of wrappers."""
    text = str(exc) or type(exc).__name__
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return _short(text)


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_text(error: object) -> str:
    """The message of an OpenAI-style error body ({"error": {"message": ...}}), else the text."""
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return _short(inner["message"])
        if isinstance(inner, str):
            return _short(inner)
        return _short(json.dumps(error))
    return _short(str(error)) or "no details"


def _malformed(message: str) -> LlmFailure:
    return LlmFailure(message, reason="malformed", retryable=True)


def _head(data: str) -> str:
    """The start of a bad event: enough to recognise it, too little to carry much reply text."""
    return _short(data, limit=24)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
