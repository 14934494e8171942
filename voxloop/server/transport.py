"""What a realtime connection needs from the wire, so one RealtimeConnection serves WebSocket and WebRTC.

    Transport   the event channel: accept, receive (text | bytes | None when the peer left), send, close
    AudioOut    where reply audio goes when it does not travel as events (WebRTC: the outgoing track)

The WebSocket satisfies Transport through `WebSocketTransport`; WebRTC's data channel through
`server.webrtc.DataChannelTransport`. A connection without an AudioOut sends reply audio as
`response.output_audio.delta` events (or binary messages), as OpenAI does over WebSocket.

A client that stops reading must not hold the server's memory or a session (the `limits` settings):

    Outbox                  the ordered messages waiting to be sent, at most limits.send_buffer_bytes
    WebSocketTransport      a send the socket has not taken within limits.send_timeout_s raises
                            ClientNotReading; close() then does not wait for the client (see below)
    ClosableWebSocketProtocol  uvicorn's websockets-sansio protocol, plus an ASGI extension
                            (`voxloop.close_now`) that queues the close frame behind what is already
                            buffered, without waiting for room, and drops the socket if the client has not
                            read it all within limits.stalled_linger_s. uvicorn's own close waits for the
                            write buffer to drain, which for a client that never reads is forever. The
                            extension also hands over the socket, whose kernel send buffer is capped at
                            limits.send_socket_bytes (Linux would autotune it up to several MB).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from voxloop.pipeline.config import LimitsSettings
from voxloop.pipeline.frames import PCM16
from voxloop.server.security import accept_subprotocol

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_NOW = "voxloop.close_now"  # the ASGI extension ClosableWebSocketProtocol adds to each WebSocket scope


class TransportClosed(Exception):
    """The peer has gone: nothing more can be sent."""


class ClientNotReading(TransportClosed):
    """The peer is connected but not taking what is sent: the session is closed with 1008 and this reason."""


@dataclass(frozen=True)
class Close:
    """The last message of an outbox: close the connection with this code and reason."""

    reason: str
    code: int = CLOSE_GOING_AWAY


class Outbox:
    """A connection's outgoing messages, in order, bounded in bytes (limits.send_buffer_bytes).

    `put` never waits (the session's producers must not stall behind a slow client); a message that
    would take the bytes waiting over the bound is dropped, and the next `get` raises ClientNotReading."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[str | bytes | Close] = deque()
        self._ready = asyncio.Event()
        self.overflow: str | None = None

    def put(self, message: str | bytes | Close) -> None:
        size = 0 if isinstance(message, Close) else len(message)
        if self.overflow is not None:
            return
        if size and self.bytes + size > self.max_bytes:
            self.overflow = (
                f"client is not reading: over {self.max_bytes} bytes waiting to be sent (limits.send_buffer_bytes)"
            )
        else:
            self._items.append(message)
            self.bytes += size
        self._ready.set()

    async def get(self) -> str | bytes | Close:
        while not self._items and self.overflow is None:
            self._ready.clear()
            await self._ready.wait()
        if self.overflow is not None:
            raise ClientNotReading(self.overflow)
        message = self._items.popleft()
        self.bytes -= 0 if isinstance(message, Close) else len(message)
        return message


class Transport(Protocol):
    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next client message; None once the peer has gone (and on every call after)."""
        ...

    async def send_text(self, text: str) -> None:
        """Send one text message; raises TransportClosed if the peer has gone."""
        ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str, *, now: bool = False) -> None:
        """Close with this code and reason; `now`: without waiting for the peer to take what is queued."""
        ...


class AudioOut(Protocol):
    """A reply-audio sink that plays out in real time and can be cut at once (barge-in)."""

    def write(self, key: str, pcm: PCM16, rate: int) -> None:
        """Queue reply audio of response `key`, at `rate` Hz."""
        ...

    def end(self, key: str) -> None:
        """Response `key` has no more audio: report it stopped once the queue plays out."""
        ...

    def flush(self) -> str | None:
        """Drop everything queued; returns the response whose audio was cut, if any."""
        ...

    def sent_ms(self, key: str) -> float:
        """How much of response `key`'s audio has left so far, in ms."""
        ...


class WebSocketTransport:
    """Starlette's WebSocket as a Transport, with a deadline on every send (limits.send_timeout_s)."""

    def __init__(self, websocket: WebSocket, limits: LimitsSettings | None = None) -> None:
        self.ws = websocket
        self.limits = limits or LimitsSettings()
        self.stalled = False

    async def accept(self) -> None:
        self._bound_socket_buffer()
        await self.ws.accept(subprotocol=accept_subprotocol(self.ws.scope))  # browsers need one offered back

    def _bound_socket_buffer(self) -> None:
        """limits.send_socket_bytes: the kernel's share of what a client that stops reading can pin."""
        extension = self.ws.scope.get("extensions", {}).get(CLOSE_NOW)
        sock = extension.get("socket") if extension else None
        if sock is not None and self.limits.send_socket_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_socket_bytes)

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except WebSocketDisconnect:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data: bytes | None = message.get("bytes")
        if data is not None:
            return data
        text: str = message.get("text") or ""
        return text

    async def send_text(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def _send(self, message: dict[str, Any]) -> None:
        timeout = self.limits.send_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await self.ws.send(message)
        except TimeoutError:
            self.stalled = True
            raise ClientNotReading(
                f"client is not reading: a message waited over {timeout:g} s to be sent (limits.send_timeout_s)"
            ) from None
        except (WebSocketDisconnect, OSError, RuntimeError):  # RuntimeError: Starlette's "after close"
            raise TransportClosed from None

    async def close(self, code: int, reason: str, *, now: bool = False) -> None:
        """Close with this code and reason; for a client that is not reading (or `now`), without waiting for it."""
        if (now or self.stalled) and self._close_now(code, reason):
            return
        try:
            async with asyncio.timeout(self.limits.send_timeout_s):
                await self.ws.close(code=code, reason=reason)
        except TimeoutError:
            self.stalled = True
            self._close_now(code, reason)
        except (WebSocketDisconnect, OSError, RuntimeError):
            raise TransportClosed from None

    def _close_now(self, code: int, reason: str) -> bool:
        """Close through the server's `voxloop.close_now` extension; False when the server has none."""
        extension = self.ws.scope.get("extensions", {}).get(CLOSE_NOW)
        if extension is None:
            log.warning("cannot close a stalled socket at once", extra={"event": "ws_close_now_missing"})
            return False
        extension["close"](code, reason, self.limits.stalled_linger_s)
        return True


class ClosableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol plus the `voxloop.close_now` ASGI extension (see the module doc).

    Use it as uvicorn's `ws` protocol (`voxloop serve` does). Under another server the extension is
    absent and a stalled client's socket is left for that server to close."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # the handshake went on to the app: its scope exists
            sock = self.transport.get_extra_info("socket")
            self.scope["extensions"][CLOSE_NOW] = {"close": self.close_now, "socket": sock}

    def close_now(self, code: int, reason: str, linger_s: float) -> None:
        """Queue the close frame behind what is buffered and end the app's receive; the socket stays open
        (reading, so a late pong or the close echo gets no reset that would destroy what the peer has not
        read) until the peer answers the close, or is dropped after `linger_s`."""
        if self.transport.is_closing():
            return
        self.stop_keepalive()
        if not self.close_sent:
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.close_timer is not None:
            self.close_timer.cancel()
        # uvicorn cancels this on the peer's close echo (then closes cleanly) or when the connection is lost.
        self.close_timer = self.loop.call_later(linger_s, self.transport.abort)
