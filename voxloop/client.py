"""A small async client for voxloop's realtime protocol (docs/PROTOCOL.md).

It does what a microphone-and-speaker client does, in a form tests and benchmarks can drive:

    async with await RealtimeClient.connect("ws://127.0.0.1:8765/v1/realtime") as client:
        await client.update_session({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}})
        await client.stream(pcm, rate=24000)             # 20 ms appends at real-time pace
        done = await client.wait_for("response.done", within=30)
        reply = client.reply_audio(done["response"]["id"])

A reader task collects every server message with its arrival time; reply audio (base64 deltas
or, on the binary fast path, binary messages) is gathered per response. The `wait_*` helpers
look through what has arrived and wait, bounded, for what has not.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import websockets
import websockets.exceptions

from voxloop.pipeline.errors import VoxloopError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.tasks import cancel_and_wait

DEFAULT_RATE = 24000
APPEND_MS = 20

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class MessageSocket(Protocol):
    """What the client needs of its connection: a websockets ClientConnection, or a WebRTC data channel."""

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str | bytes) -> None: ...

    async def close(self) -> None: ...


class ClientError(VoxloopError):
    """The server could not be reached, went away, or never sent what was awaited."""


@dataclass(frozen=True, slots=True)
class Received:
    """One server message: a JSON event, or (binary fast path) raw reply audio."""

    event: Event
    at: float  # time.monotonic() on arrival
    index: int


BINARY_AUDIO = "voxloop.binary_audio"  # the pseudo event type a binary message is logged as


class RealtimeClient:
    def __init__(self, ws: MessageSocket) -> None:
        self.ws = ws
        self.received: list[Received] = []
        self.audio: dict[str, list[PCM16]] = {}  # response id → reply audio pieces, in order
        self.binary = False  # send input audio as binary messages (after opting in)
        self._active: str | None = None  # the response between its created and done events
        self._changed = asyncio.Event()  # replaced by a fresh one each time it is set
        self._closed: BaseException | None = None
        self._reader = asyncio.create_task(self._read(), name="realtime-client-reader")

    @classmethod
    async def connect(cls, url: str, *, within: float = 10.0, headers: dict[str, str] | None = None) -> RealtimeClient:
        """Open the socket; an unreachable or wrong URL raises ClientError saying which."""
        try:
            ws = await websockets.connect(url, open_timeout=within, additional_headers=headers, max_size=None)
        except (OSError, TimeoutError, websockets.exceptions.InvalidURI) as exc:
            raise ClientError(f"cannot connect to {url}: {exc}; is `voxloop serve` running there?") from None
        except websockets.exceptions.InvalidHandshake as exc:
            raise ClientError(f"{url} is not a voxloop realtime endpoint ({exc}); the path is /v1/realtime") from None
        return cls(ws)

    async def __aenter__(self) -> RealtimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()
        await cancel_and_wait(self._reader)

    # -- receiving -------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self._record(message)
                self._notify()
            self._closed = ClientError("the server closed the connection")
        except websockets.exceptions.ConnectionClosed as exc:
            self._closed = exc
        except (ValueError, KeyError, TypeError) as exc:
            self._closed = ClientError(f"the server sent a message this client cannot read: {exc!r}")
        finally:
            self._closed = self._closed or ClientError("the client was closed")
            self._notify()

    def _notify(self) -> None:
        """Wake every waiter; each looks again at what has arrived."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            event: Event = {"type": BINARY_AUDIO, "response_id": self._active, "bytes": len(message)}
            self._add_audio(self._active, np.frombuffer(message, dtype="<i2").astype(np.int16))
        else:
            event = json.loads(message)
            kind = event.get("type")
            if kind == "response.created":
                self._active = event["response"]["id"]
            elif kind == "response.done" and event["response"]["id"] == self._active:
                self._active = None
            elif kind == "response.output_audio.delta":
                pcm = np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2").astype(np.int16)
                self._add_audio(event["response_id"], pcm)
        self.received.append(Received(event, time.monotonic(), len(self.received)))

    def _add_audio(self, response_id: str | None, pcm: PCM16) -> None:
        self.audio.setdefault(response_id or "", []).append(pcm)

    @property
    def closed(self) -> bool:
        """The connection has ended (the server closed it, or it broke)."""
        return self._closed is not None

    @property
    def events(self) -> list[Event]:
        return [r.event for r in self.received]

    def of_type(self, kind: str, *, since: int = 0) -> list[Event]:
        return [r.event for r in self.received[since:] if r.event.get("type") == kind]

    def find(self, kind: str | None, *, since: int = 0, where: Predicate | None = None) -> Received | None:
        """The first message at index >= `since` of type `kind` (None: any) matching `where`."""
        for item in self.received[since:]:
            if kind in (None, item.event.get("type")) and (where is None or where(item.event)):
                return item
        return None

    async def wait_for(self, kind: str, *, within: float, since: int = 0, where: Predicate | None = None) -> Event:
        """The first `kind` event at index >= `since` (matching `where`), waiting up to `within` s."""
        return (await self.wait_received(kind, within=within, since=since, where=where)).event

    async def wait_received(
        self, kind: str | None, *, within: float, since: int = 0, where: Predicate | None = None
    ) -> Received:
        try:
            async with asyncio.timeout(within):
                while (found := self.find(kind, since=since, where=where)) is None:
                    if self._closed is not None:
                        raise ClientError(f"the connection closed before {kind!r} arrived: {self._closed}")
                    await self._changed.wait()
                return found
        except TimeoutError:
            seen = sorted({_summary(r.event) for r in self.received[since:]})
            raise ClientError(
                f"no {kind!r} within {within} s; received since: {', '.join(seen) or 'nothing'}"
            ) from None

    async def wait_error(self, code: str, *, within: float = 5.0, since: int = 0) -> Event:
        """The first `error` event with this code: its `error` object."""
        event = await self.wait_for("error", within=within, since=since, where=lambda e: e["error"]["code"] == code)
        error: Event = event["error"]
        return error

    async def wait_turn(self, *, within: float, since: int = 0) -> tuple[Event, Event]:
        """The next completed reply: its `response.done` and the `voxloop.trace` after it."""
        done = await self.wait_received(
            "response.done", within=within, since=since, where=lambda e: e["response"]["status"] == "completed"
        )
        trace = await self.wait_for("voxloop.trace", within=5.0, since=done.index)
        return done.event, trace

    def reply_audio(self, response_id: str) -> PCM16:
        pieces = self.audio.get(response_id, [])
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    @property
    def mark(self) -> int:
        """The index the next message will get: pass it as `since` to wait for what comes after now."""
        return len(self.received)

    # -- sending ---------------------------------------------------------------------------

    async def send(self, event: Event) -> None:
        await self.ws.send(json.dumps(event))

    async def send_raw(self, message: str | bytes) -> None:
        await self.ws.send(message)

    async def update_session(self, session: Event, *, within: float = 5.0) -> Event:
        """Send session.update (type "realtime" filled in) and return the session.updated event."""
        since = self.mark
        await self.send({"type": "session.update", "session": {"type": "realtime", **session}})
        return await self.wait_for("session.updated", within=within, since=since)

    async def enable_binary(self) -> Event:
        updated = await self.update_session({"voxloop": {"binary_audio": True}})
        self.binary = True
        return updated

    async def append(self, pcm: PCM16) -> None:
        data = np.asarray(pcm, dtype="<i2").tobytes()
        if self.binary:
            await self.ws.send(data)
        else:
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode("ascii")})

    async def stream(self, pcm: PCM16, *, rate: int = DEFAULT_RATE, realtime: bool = True) -> None:
        """Append `pcm` in 20 ms pieces, each when a microphone would deliver it (or at once)."""
        step = rate * APPEND_MS // 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, offset in enumerate(range(0, len(pcm), step)):
            if realtime:
                await asyncio.sleep(max(0.0, start + index * APPEND_MS / 1000 - loop.time()))
            await self.append(pcm[offset : offset + step])


def _summary(event: Event) -> str:
    if event.get("type") == "error":
        return f"error {event['error']['code']} ({event['error']['message']})"
    return str(event.get("type", "?"))


def silence(seconds: float, rate: int = DEFAULT_RATE) -> PCM16:
    return np.zeros(int(rate * seconds), np.int16)
