"""What a realtime connection needs from the wire, so one RealtimeConnection serves WebSocket and WebRTC.

    Transport   the event channel: accept, receive (text | bytes | None when the peer left), send, close
    AudioOut    where reply audio goes when it does not travel as events (WebRTC: the outgoing track)

The WebSocket satisfies Transport through `WebSocketTransport`; WebRTC's data channel through
`server.webrtc.DataChannelTransport`. A connection without an AudioOut sends reply audio as
`response.output_audio.delta` events (or binary messages), as OpenAI does over WebSocket.
"""

from __future__ import annotations

from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.pipeline.frames import PCM16
from voxloop.server.security import accept_subprotocol


class TransportClosed(Exception):
    """The peer has gone: nothing more can be sent."""


class Transport(Protocol):
    async def accept(self) -> None: ...

    async def receive(self) -> str | bytes | None:
        """The next client message; None once the peer has gone (and on every call after)."""
        ...

    async def send_text(self, text: str) -> None:
        """Send one text message; raises TransportClosed if the peer has gone."""
        ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


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
    """Starlette's WebSocket as a Transport."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket

    async def accept(self) -> None:
        await self.ws.accept(subprotocol=accept_subprotocol(self.ws.scope))  # browsers need one offered back

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
        try:
            await self.ws.send_text(text)
        except WebSocketDisconnect:
            raise TransportClosed from None

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except WebSocketDisconnect:
            raise TransportClosed from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code=code, reason=reason)
        except WebSocketDisconnect:
            raise TransportClosed from None
