"""A simulated user: streams a conversation at real-time pace and waits politely for replies.

Each segment is sent in 20 ms frames when a microphone would deliver it. With `polite=True`
(the conversation mode) the user, after a pause, keeps the microphone open on silence until the
reply in flight has finished playing (as a real listener would), then goes on; with
`polite=False` (the pause-ladder mode) the recording is streamed exactly as recorded.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field
from typing import Any

from voxloop.bench.conversation import RATE, Conversation, silence
from voxloop.client import APPEND_MS, RealtimeClient, Received
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
        self._replies = ReplyFollower(client.received)

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
        replies = self._replies
        replies.catch_up()
        if not replies.turn_ended:
            return False
        if replies.answered is None:
            return True  # the turn ended and its reply has not finished
        if isinstance(self.client, RtcClient):  # the server's track plays it: wait until it says it stopped
            return replies.answered not in replies.track_ended
        played = replies.playbacks.get(replies.answered)
        return played is not None and played.end is not None and self._loop.time() < played.end


class ReplyFollower:
    """What the user listens for, read from a client's events once each, as they arrive: the
    events pile up all run long, and reading them all again every 20 ms frame (base64 included)
    took the benchmark a good part of a core with four users, from the server it measures."""

    def __init__(self, received: list[Received]) -> None:
        self._received = received
        self._read = 0
        self.turn_ended = False  # a speech_stopped has come
        self.answered: str | None = None  # the last reply done since the last speech_stopped
        self.playbacks: dict[str, Playback] = {}
        self.track_ended: set[str] = set()  # WebRTC replies whose track stopped playing them

    def catch_up(self) -> None:
        for item in self._received[self._read :]:
            event, kind = item.event, item.event.get("type")
            if kind == "input_audio_buffer.speech_stopped":
                self.turn_ended, self.answered = True, None
            elif kind == "response.done":
                self.answered = event["response"]["id"]
            elif kind in TRACK_ENDS:
                self.track_ended.add(str(event.get("response_id")))
            elif (samples := reply_samples(event)) is not None:
                self.playbacks.setdefault(event["response_id"], Playback()).add(item.at, samples)
        self._read = len(self._received)


@dataclass
class Playback:
    """A reply played as it arrives: from its first chunk's arrival on, it runs dry (an underrun)
    whenever a chunk comes after what came before it has played out."""

    end: float | None = None  # when what has come so far will have played; None before the first chunk
    underruns: int = 0
    underrun_ms: float = 0.0

    def add(self, at: float, samples: int, rate: int = RATE) -> None:
        end = at if self.end is None else self.end
        if at > end + 0.001:
            self.underruns += 1
            self.underrun_ms += (at - end) * 1000
            end = at
        self.end = end + samples / rate


def reply_samples(event: dict[str, Any]) -> int | None:
    """Samples at 16 kHz of reply audio in an event (a delta or a WebRTC track frame); None if it has none."""
    kind = event.get("type")
    if kind == "response.output_audio.delta":
        delta = str(event["delta"])  # base64: its length tells the size without decoding it
        return (len(delta) * 3 // 4 - delta[-2:].count("=")) // 2
    if kind == RTC_AUDIO:
        return int(event["samples"] * RATE // event["rate"])
    return None


def reply_chunks(events: list[Received], response_id: str) -> list[tuple[float, int]]:
    """(arrival time, samples at 16 kHz) of each reply-audio delta (or WebRTC track frame) of one response."""
    return [
        (item.at, samples)
        for item in events
        if item.event.get("response_id") == response_id and (samples := reply_samples(item.event)) is not None
    ]


def playback(chunks: list[tuple[float, int]]) -> Playback:
    """Simulated playback of a whole reply, from its first chunk's arrival."""
    played = Playback()
    for at, samples in chunks:
        played.add(at, samples)
    return played
