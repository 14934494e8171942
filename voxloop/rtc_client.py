"""A WebRTC realtime client (aiortc): voxloop.client's events over the `oai-events` data channel, audio on tracks.

    client = await RtcClient.connect("http://127.0.0.1:8765")   # POST /v1/realtime/calls, as OpenAI's API
    await client.update_session({})                              # the same events as over WebSocket
    await client.stream(pcm, rate=16000)                         # into the microphone track, real-time paced
    done = await client.wait_for("response.done", within=30)
    reply = client.reply_audio(done["response"]["id"])           # what the reply track played (48 kHz)

The microphone track sends 20 ms Opus frames at real-time pace from a buffer (silence when it is
empty), like a real microphone. Every frame the reply track delivers is kept with its arrival time
(`frames`); frames of a reply (from `output_audio_buffer.started`, or its first sound, until it
stopped or was cleared) are also logged as `voxloop.rtc_audio` pseudo events, so the helpers of
RealtimeClient (and the benchmark) see reply audio as they do over WebSocket. `echo_gain` mixes the
received audio back into the microphone, `echo_delay_ms` later: a speaker heard by the microphone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdatachannel import RTCDataChannel

from voxloop.client import ClientError, Event, RealtimeClient, Received
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.server.rtc_audio import FRAME_MS, FRAME_SAMPLES, RTC_RATE, ReplyTrack

RTC_AUDIO = "voxloop.rtc_audio"  # the pseudo event a received reply frame is logged as
SILENCE_PEAK = 64  # a decoded frame whose samples all stay within this is silence (Opus of digital zeros)
MIC = "mic"


class ChannelSocket:
    """An RTCDataChannel as voxloop.client's MessageSocket."""

    def __init__(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(None))

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        while (message := await self._inbox.get()) is not None:
            yield message

    async def send(self, message: str | bytes) -> None:
        if self.channel.readyState != "open":
            raise ClientError(f"the events channel is {self.channel.readyState}, not open")
        self.channel.send(message)

    async def close(self) -> None:
        self.channel.close()
        self._inbox.put_nowait(None)


class MicTrack(ReplyTrack):
    """The microphone: paced 20 ms frames from a buffer, plus (optionally) an echo of what was heard."""

    def __init__(self) -> None:
        super().__init__()
        self.echo_gain = 0.0
        self.echo: deque[PCM16] = deque()  # received frames, oldest first, delayed by pre-filled silence

    def _take(self) -> PCM16:
        # Whole frames only: a microphone never splits a frame with silence. Short of one (the
        # appender's clock a hair behind the track's), send silence once; the buffer then holds a frame.
        if self.queued_ms * RTC_RATE / 1000 < FRAME_SAMPLES:
            frame = np.zeros(FRAME_SAMPLES, np.int16)
        else:
            frame = super()._take()
        if self.echo_gain <= 0 or not self.echo:
            return frame
        heard = self.echo.popleft()[:FRAME_SAMPLES].astype(np.float32) * self.echo_gain
        mixed = frame.astype(np.float32)
        mixed[: len(heard)] += heard
        return np.clip(mixed, -32768, 32767).astype(np.int16)


class RtcClient(RealtimeClient):
    def __init__(self, pc: RTCPeerConnection, channel: RTCDataChannel, mic: MicTrack, *, echo_delay_ms: int) -> None:
        super().__init__(ChannelSocket(channel))
        self.pc = pc
        self.mic = mic
        self.in_rate = 16000  # the rate of the PCM given to append()
        self.frames: list[tuple[float, PCM16]] = []  # every received frame: (time.monotonic(), 48 kHz mono)
        self.reply_rate = RTC_RATE
        self.call_url: str | None = None
        self._echo_frames = max(0, echo_delay_ms // FRAME_MS)
        self._on_air: str | None = None
        self._latest: str | None = None  # the last response created
        self._cut: set[str] = set()  # responses cleared (barge-in): late frames are not theirs
        self._track_reader: asyncio.Task[None] | None = None
        pc.on("track", self._on_track)

    @classmethod
    async def connect_rtc(
        cls,
        base_url: str,
        *,
        within: float = 15.0,
        ice_servers: list[RTCIceServer] | None = None,
        echo_gain: float = 0.0,
        echo_delay_ms: int = 60,
    ) -> RtcClient:
        """Offer (every candidate gathered), POST it to /v1/realtime/calls, apply the answer, await the channel."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        mic = MicTrack()
        mic.echo_gain = echo_gain
        pc.addTrack(mic)
        channel = pc.createDataChannel("oai-events")
        client = cls(pc, channel, mic, echo_delay_ms=echo_delay_ms)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await _post_offer(base_url, pc.localDescription.sdp, within)
            client.call_url = answer.headers.get("location")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.text, type="answer"))
            await _opened(channel, within)
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        await super().close()
        self.mic.stop()
        await self.pc.close()
        if self._track_reader is not None:
            await cancel_and_wait(self._track_reader)

    # -- sending ---------------------------------------------------------------------------

    async def append(self, pcm: PCM16) -> None:
        """Queue microphone audio (at `in_rate`); the track sends it at real-time pace."""
        self.mic.write(MIC, pcm, self.in_rate)

    async def stream(self, pcm: PCM16, *, rate: int = 16000, realtime: bool = True) -> None:
        self.in_rate = rate
        await super().stream(pcm, rate=rate, realtime=realtime)

    # -- receiving -------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._track_reader is None:
            self._track_reader = asyncio.create_task(self._read_track(track), name="rtc-client-track")

    async def _read_track(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RTC_RATE)
        self.mic.echo.extend(np.zeros(FRAME_SAMPLES, np.int16) for _ in range(self._echo_frames))
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for out in resampler.resample(frame):
                self._heard(out.to_ndarray().reshape(-1).astype(np.int16))

    def _heard(self, pcm: PCM16) -> None:
        at = time.monotonic()
        self.frames.append((at, pcm))
        if self.mic.echo_gain > 0:
            self.mic.echo.append(pcm)
            while len(self.mic.echo) > self._echo_frames + 10:  # the two clocks drift: keep the delay bounded
                self.mic.echo.popleft()
        loud = int(np.abs(pcm).max(initial=0)) > SILENCE_PEAK
        rid = self._on_air or (self._latest if loud and self._latest not in self._cut else None)
        if rid is None:
            return
        self._add_audio(rid, pcm)
        event: Event = {"type": RTC_AUDIO, "response_id": rid, "samples": len(pcm), "rate": RTC_RATE}
        self.received.append(Received(event, at, len(self.received)))
        self._notify()

    def _record(self, message: str | bytes) -> None:
        super()._record(message)
        event = self.received[-1].event
        kind, rid = event.get("type"), event.get("response_id")
        if kind == "response.created":
            self._latest = event["response"]["id"]
        elif kind == "output_audio_buffer.started":
            self._on_air = rid
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared") and rid == self._on_air:
            self._on_air = None
        if kind == "output_audio_buffer.cleared" and isinstance(rid, str):
            self._cut.add(rid)

    def loud_frames(self, since: float = 0.0) -> list[float]:
        """Arrival times of received frames with sound in them, from `since` (time.monotonic()) on."""
        return [at for at, pcm in self.frames if at >= since and int(np.abs(pcm).max(initial=0)) > SILENCE_PEAK]


async def _post_offer(base_url: str, sdp: str, within: float) -> httpx.Response:
    url = base_url.rstrip("/") + "/v1/realtime/calls"
    try:
        async with httpx.AsyncClient(timeout=within) as http:
            response = await http.post(url, content=sdp, headers={"Content-Type": "application/sdp"})
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url}: {exc}; is `voxloop serve` running there?") from None
    if response.status_code != 201:
        raise ClientError(f"{url} refused the offer ({response.status_code}): {response.text[:300]}")
    return response


async def _opened(channel: RTCDataChannel, within: float) -> None:
    if channel.readyState == "open":
        return
    opened = asyncio.Event()
    channel.on("open", opened.set)
    try:
        await asyncio.wait_for(opened.wait(), within)
    except TimeoutError:
        raise ClientError(f"the events channel did not open within {within} s (ICE or DTLS failed)") from None
