"""A simulated user: streams a conversation at real-time pace and waits politely for replies.

Each segment is sent in 20 ms frames when a microphone would deliver it. With `polite=True`
(the conversation mode) the user, after a pause, keeps the microphone open on silence until the
reply in flight has finished playing (as a real listener would), then goes on; with
`polite=False` (the pause-ladder mode) the recording is streamed exactly as recorded.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
from dataclasses import dataclass, field
from typing import Any

from voxloop.bench.conversation import RATE, Conversation, silence
from voxloop.client import APPEND_MS, RealtimeClient
from voxloop.pipeline.frames import PCM16
from voxloop.rtc_client import RTC_AUDIO, RtcClient

STEP = RATE * APPEND_MS // 1000
MAX_REPLY_WAIT_S = 20.0
TAIL_S = 1.5
TRACK_ENDS = ("output_audio_buffer.stopped", "output_audio_buffer.cleared")


@dataclass
class UserRun:
    """What one simulated user sent and received."""

    client: RealtimeClient
    sent_at: list[float] = field(default_factory=list)  # wall time (monotonic) of each 20 ms frame
    speech: list[tuple[float, float, float]] = field(default_factory=list)  # streamed (start, voiced_end, end) s
    late_frames: int = 0  # frames the client itself sent more than one frame late (a busy benchmark)

    def wall_of(self, audio_s: float) -> float:
        """When the sample at `audio_s` (streamed timeline) was sent."""
        index = min(len(self.sent_at) - 1, max(0, int(audio_s * 1000 // APPEND_MS)))
        return self.sent_at[index]

    def audio_of(self, wall: float) -> float:
        """The streamed-audio position (s) that had been sent by wall time `wall`."""
        return bisect.bisect_right(self.sent_at, wall) * APPEND_MS / 1000


class SimulatedUser:
    def __init__(
        self, client: RealtimeClient, conversation: Conversation, *, polite: bool, lead_in_s: float = 0.0
    ) -> None:
        self.client = client
        self.conversation = conversation
        self.polite = polite
        self.lead_in_s = lead_in_s  # silence before the first segment (microphone open)
        self.run = UserRun(client)
        self._loop = asyncio.get_running_loop()
        self._next = 0.0  # loop time the next frame is due

    async def talk(self) -> UserRun:
        self._next = self._loop.time()
        await self._send(silence(self.lead_in_s))
        for segment in self.conversation.segments:
            start = len(self.run.sent_at) * APPEND_MS / 1000
            if segment.spoken:
                voiced_end = start + segment.voiced_end_s - segment.start_s
                self.run.speech.append((start, voiced_end, start + segment.end_s - segment.start_s))
            await self._send(self.conversation.audio(segment))
            if not segment.spoken and self.polite:
                await self._wait_for_reply()
        await self._send(silence(TAIL_S))
        await self._wait_for_reply()
        return self.run

    async def _send(self, pcm: PCM16) -> None:
        for offset in range(0, len(pcm), STEP):
            await self._frame(pcm[offset : offset + STEP])

    async def _frame(self, pcm: PCM16) -> None:
        delay = self._next - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -APPEND_MS / 1000:
            self.run.late_frames += 1
        self.run.sent_at.append(self._loop.time())
        await self.client.append(pcm)
        self._next += APPEND_MS / 1000

    async def _wait_for_reply(self) -> None:
        """Keep sending silence while a turn is being answered or its reply is still playing."""
        deadline = self._loop.time() + MAX_REPLY_WAIT_S
        while self._loop.time() < deadline and self._busy():
            await self._frame(silence(APPEND_MS / 1000))

    def _busy(self) -> bool:
        events = self.client.received
        last_stop = max(
            (r.index for r in events if r.event.get("type") == "input_audio_buffer.speech_stopped"), default=-1
        )
        if last_stop < 0:
            return False
        done = [r for r in events[last_stop:] if r.event.get("type") == "response.done"]
        if not done:
            return True  # the turn ended and its reply has not finished
        rid = done[-1].event["response"]["id"]
        if isinstance(self.client, RtcClient):  # the server's track plays it: wait until it says it stopped
            return not any(r.event.get("type") in TRACK_ENDS and r.event.get("response_id") == rid for r in events)
        return self._loop.time() < playback_end(events, rid)


def reply_chunks(events: list[Any], response_id: str) -> list[tuple[float, int]]:
    """(arrival time, samples at 16 kHz) of each reply-audio delta (or WebRTC track frame) of one response."""
    chunks = []
    for item in events:
        event = item.event
        if event.get("response_id") != response_id:
            continue
        if event.get("type") == "response.output_audio.delta":
            chunks.append((item.at, len(base64.b64decode(event["delta"])) // 2))
        elif event.get("type") == RTC_AUDIO:
            chunks.append((item.at, event["samples"] * RATE // event["rate"]))
    return chunks


def playback(chunks: list[tuple[float, int]], rate: int = RATE) -> tuple[float, int, float]:
    """Simulated playback from the first chunk's arrival: (end time, underruns, underrun ms)."""
    if not chunks:
        return 0.0, 0, 0.0
    end = chunks[0][0]
    underruns, gap_ms = 0, 0.0
    for at, samples in chunks:
        if at > end + 0.001:
            underruns += 1
            gap_ms += (at - end) * 1000
            end = at
        end += samples / rate
    return end, underruns, gap_ms


def playback_end(events: list[Any], response_id: str) -> float:
    return playback(reply_chunks(events, response_id))[0]
