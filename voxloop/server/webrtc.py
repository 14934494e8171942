"""The WebRTC transport: SDP signalling over HTTP, one RealtimeConnection per peer connection.

    POST /v1/realtime/calls             an SDP offer (application/sdp) in, the SDP answer out (201)
    PATCH /v1/realtime/calls/{call_id}  trickled ICE candidates (application/trickle-ice-sdpfrag), tolerated
    DELETE /v1/realtime/calls/{call_id} hang up

As OpenAI does it: the client opens a data channel named `oai-events` and one audio track; the
events are the WebSocket path's (docs/PROTOCOL.md, "WebRTC"), reply audio goes out on the
server's Opus track (server/rtc_audio.py) instead of as delta events. The call's session lives
as long as the peer connection: a closed or failed connection, or the data channel closing, ends
it and frees everything; an ICE disconnect ends it only if it lasts `webrtc.ice_disconnect_grace_s`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdatachannel import RTCDataChannel
from aiortc.sdp import candidate_from_sdp
from fastapi import APIRouter, HTTPException, Request, Response
from starlette.requests import ClientDisconnect

from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.server.limits import sessions_full
from voxloop.server.realtime import RealtimeConnection
from voxloop.server.rest import client_gone, unless_disconnected
from voxloop.server.rtc_audio import ReplyTrack, read_track
from voxloop.server.transport import ClientNotReading, TransportClosed

if TYPE_CHECKING:
    from aiortc.mediastreams import MediaStreamTrack

    from voxloop.pipeline.config import WebRtcSettings

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "oai-events"
SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"
CHANNEL_OPEN_TIMEOUT_S = 15.0
ENDED_STATES = frozenset({"failed", "closed"})

router = APIRouter(tags=["realtime"])


class DataChannelTransport:
    """The `oai-events` data channel as a Transport (server/transport.py)."""

    def __init__(self, max_buffered_bytes: int) -> None:
        self.max_buffered_bytes = max_buffered_bytes  # limits.send_buffer_bytes
        self.channel: RTCDataChannel | None = None
        self.opened = asyncio.Event()
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    def attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(None))
        if channel.readyState == "open":
            self.opened.set()
        else:
            channel.on("open", self.opened.set)

    async def accept(self) -> None:
        await asyncio.wait_for(self.opened.wait(), CHANNEL_OPEN_TIMEOUT_S)

    async def receive(self) -> str | bytes | None:
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)  # every later call sees the end too
        return message

    async def send_text(self, text: str) -> None:
        self._open_channel().send(text)

    async def send_bytes(self, data: bytes) -> None:
        self._open_channel().send(data)

    async def close(self, code: int, reason: str, *, now: bool = False) -> None:
        if self.channel is not None:
            self.channel.close()
        self._inbox.put_nowait(None)

    def _open_channel(self) -> RTCDataChannel:
        if self.channel is None or self.channel.readyState != "open":
            raise TransportClosed
        if self.channel.bufferedAmount > self.max_buffered_bytes:  # SCTP holds what the peer has not taken
            raise ClientNotReading(
                f"client is not reading: over {self.max_buffered_bytes} bytes waiting on the data channel "
                "(limits.send_buffer_bytes)"
            )
        return self.channel


def ice_servers(settings: WebRtcSettings) -> list[RTCIceServer]:
    """The configured STUN/TURN servers; none means host candidates only (never aiortc's public default)."""
    return [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in settings.ice_servers]


class RtcCall:
    """One peer connection and the realtime session riding on it."""

    def __init__(self, request: Request) -> None:
        state = request.app.state
        self.id = "rtc_" + uuid.uuid4().hex[:16]
        self.settings: WebRtcSettings = state.settings.webrtc
        self.registry = state.connections  # shutdown tells every open session, WebSocket or WebRTC
        self.peers: set[RtcCall] = state.rtc_calls.peers
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(self.settings)))
        self.peers.add(self)  # until close_peer(): /metrics counts it (voxloop_peer_connections)
        self.events = DataChannelTransport(state.settings.limits.send_buffer_bytes)
        self.track = ReplyTrack()
        self.mic: MediaStreamTrack | None = None
        self.connection = RealtimeConnection(
            self.events, state.engines, state.tracer, state.voices, audio_out=self.track
        )
        self.track.on_started, self.track.on_stopped = self.connection.audio_started, self.connection.audio_stopped
        self._state_changed = asyncio.Event()
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._state_changed.set)

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if channel.label == EVENTS_CHANNEL:
            self.events.attach(channel)
        else:
            log.info("data channel ignored", extra={"event": "rtc_channel_ignored", "label": channel.label})

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.mic is None:
            self.mic = track

    async def answer(self, offer: str) -> str:
        """Apply the client's offer; returns the answer, with every candidate gathered (no trickle needed)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def add_candidates(self, fragment: str) -> int:
        """Add trickled candidates (`a=candidate:` lines of an SDP fragment); returns how many."""
        added = 0
        mid = next((t.mid for t in self.pc.getTransceivers() if t.mid is not None), "0")
        for line in fragment.splitlines():
            if line.startswith("a=candidate:"):
                candidate = candidate_from_sdp(line[2:].strip())
                candidate.sdpMid = mid
                await self.pc.addIceCandidate(candidate)
                added += 1
        return added

    async def run(self) -> None:
        """The session, until the peer connection ends; then everything is freed."""
        log.info("webrtc call started", extra={"event": "rtc_call_open", "call": self.id})
        try:
            companions = [self._watch_connection]
            if self.mic is not None:
                companions.append(self._read_mic)
            await self.events.accept()
            self.registry.open.add(self.connection)
            await self.connection.run(*companions)
        except TimeoutError:
            log.info("no events channel opened", extra={"event": "rtc_no_channel", "call": self.id})
        finally:
            self.registry.open.discard(self.connection)
            self.track.stop()
            await self.close_peer()
            log.info("webrtc call ended", extra={"event": "rtc_call_close", "call": self.id})

    async def close_peer(self) -> None:
        """Close the peer connection (ICE, DTLS, SCTP and their tasks); safe to call more than once."""
        try:
            await self.pc.close()
        finally:
            self.peers.discard(self)

    async def _read_mic(self) -> None:
        assert self.mic is not None
        await read_track(self.mic, self.connection.inner_audio)

    async def _watch_connection(self) -> None:
        """Return (ending the session) when the peer connection fails or closes, or stays disconnected."""
        grace = self.settings.ice_disconnect_grace_s
        while True:
            state = self.pc.connectionState
            if state in ENDED_STATES:
                log.info("peer connection ended", extra={"event": "rtc_peer_ended", "call": self.id, "state": state})
                return
            self._state_changed.clear()
            try:
                await asyncio.wait_for(self._state_changed.wait(), grace if state == "disconnected" else None)
            except TimeoutError:
                log.info("ice disconnect outlasted grace", extra={"event": "rtc_disconnect_timeout", "call": self.id})
                return


class RtcCalls:
    """The calls in progress, so shutdown can end them and nothing outlives the app."""

    def __init__(self) -> None:
        self.calls: dict[str, RtcCall] = {}
        self.peers: set[RtcCall] = set()  # every peer connection made and not yet closed, started or not
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, call: RtcCall) -> None:
        self.calls[call.id] = call
        task = asyncio.create_task(self._serve(call), name=f"rtc-call-{call.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, call: RtcCall) -> None:
        try:
            await call.run()
        finally:
            self.calls.pop(call.id, None)

    async def close(self, grace_s: float = 1.0) -> None:
        """Give each call `grace_s` to send what it queued (the shutdown notice) and close, then cancel it."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace_s)
        await cancel_and_wait(*self.tasks)


def _settings(request: Request) -> WebRtcSettings:
    settings: WebRtcSettings = request.app.state.settings.webrtc
    if not settings.enabled:
        raise HTTPException(404, "WebRTC is turned off on this server: set webrtc.enabled to true, or use /v1/realtime")
    return settings


async def _body(request: Request, media_type: str) -> str:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != media_type:
        raise HTTPException(415, f"send the body as Content-Type: {media_type} (got {given or 'none'})")
    try:
        return (await request.body()).decode("utf-8")
    except ClientDisconnect:
        raise client_gone(request.url.path, "upload") from None
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8 text") from None


def _call(request: Request, call_id: str) -> RtcCall:
    call: RtcCall | None = request.app.state.rtc_calls.calls.get(call_id)
    if call is None:
        raise HTTPException(404, f"no call {call_id!r}: it ended, or was never made here")
    return call


SDP_RESPONSE: dict[int | str, dict[str, Any]] = {201: {"content": {SDP_TYPE: {}}, "description": "the SDP answer"}}


@router.post("/v1/realtime/calls", status_code=201, response_class=Response, responses=SDP_RESPONSE)
async def create_call(request: Request) -> Response:
    """Start a realtime session over WebRTC: POST the SDP offer, get the SDP answer (as OpenAI's API does)."""
    _settings(request)
    full = sessions_full(len(request.app.state.connections.open), request.app.state.settings.limits)
    if full is not None:
        raise HTTPException(503, full, headers={"Retry-After": "5"})
    offer = await _body(request, SDP_TYPE)
    if not offer.lstrip().startswith("v=0") or "m=" not in offer:
        raise HTTPException(400, "the body must be an SDP offer (starting with v=0, with an m= section)")
    call = RtcCall(request)
    try:
        answer = await unless_disconnected(request, call.answer(offer))  # a client gone mid-negotiation: 499
    except (ValueError, AttributeError) as exc:
        await call.close_peer()
        raise HTTPException(400, f"the SDP offer could not be used: {exc}") from None
    except BaseException:
        await call.close_peer()
        raise
    if await request.is_disconnected():  # gone as the answer was made: nobody will connect to this peer
        await call.close_peer()
        raise client_gone(request.url.path, "negotiation")
    request.app.state.rtc_calls.start(call)
    return Response(answer, 201, media_type=SDP_TYPE, headers={"Location": f"/v1/realtime/calls/{call.id}"})


@router.patch("/v1/realtime/calls/{call_id}", status_code=204, response_class=Response)
async def trickle(call_id: str, request: Request) -> Response:
    """Trickled ICE candidates for a call (optional: the answer already carries the server's)."""
    _settings(request)
    call = _call(request, call_id)
    await call.add_candidates(await _body(request, TRICKLE_TYPE))
    return Response(status_code=204)


@router.delete("/v1/realtime/calls/{call_id}", status_code=204, response_class=Response)
async def hang_up(call_id: str, request: Request) -> Response:
    """End a call: its session closes and its peer connection is freed."""
    call = _call(request, call_id)
    await call.close_peer()
    return Response(status_code=204)
