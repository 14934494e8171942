"""WebRTC audio for a realtime connection: the microphone track in, the reply track out.

    read_track(track, push)   decoded Opus frames (48 kHz) → mono 16 kHz PCM16 → push(pcm)
    ReplyTrack                an outgoing audio track that paces 20 ms frames at 48 kHz from a buffer

The reply track is the connection's AudioOut: TTS audio is queued (resampled to 48 kHz) faster
than real time, and the track hands it to aiortc's Opus encoder one 20 ms frame per 20 ms, with
silence when nothing is queued. `flush()` empties the queue at once, so a barge-in leaves at
most the frame already handed out in flight. The track reports the first and last frame of each
reply (`on_started`, `on_stopped`): over WebRTC that is when reply audio really leaves.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxloop.pipeline.audio import Resampler
from voxloop.pipeline.frames import PCM16

log = logging.getLogger(__name__)

RTC_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = RTC_RATE * FRAME_MS // 1000
INNER_RATE = 16000
TIME_BASE = fractions.Fraction(1, RTC_RATE)
MAX_LAG_S = 0.5  # further behind than this (a stalled loop), the pacing clock restarts instead of bursting

Listener = Callable[[str], None]


async def read_track(track: MediaStreamTrack, push: Callable[[PCM16], Awaitable[None]]) -> None:
    """Feed a remote audio track to `push` as mono 16 kHz PCM16 until the track ends."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=INNER_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            log.info("microphone track ended", extra={"event": "rtc_track_ended"})
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        for out in resampler.resample(frame):
            await push(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))


@dataclass(slots=True)
class _Piece:
    key: str
    pcm: PCM16  # 48 kHz
    offset: int = 0


class ReplyTrack(MediaStreamTrack):
    """The outgoing reply audio: real-time pacing from a flushable buffer (an AudioOut)."""

    kind = "audio"

    def __init__(self, on_started: Listener | None = None, on_stopped: Listener | None = None) -> None:
        super().__init__()
        self.on_started = on_started
        self.on_stopped = on_stopped
        self._queue: deque[_Piece] = deque()
        self._resamplers: dict[str, Resampler] = {}
        self._sent: dict[str, int] = {}  # response → samples handed out (48 kHz)
        self._ended: set[str] = set()
        self._playing: str | None = None  # the response whose audio went out last and has not stopped
        self._start: float | None = None
        self._pts = 0
        self.frames_out = 0

    # -- the AudioOut side (the connection) -------------------------------------------------

    def write(self, key: str, pcm: PCM16, rate: int) -> None:
        resampler = self._resamplers.get(key)
        if resampler is None:
            resampler = self._resamplers[key] = Resampler(rate, RTC_RATE)
        out = resampler.push(pcm)
        if len(out):
            self._queue.append(_Piece(key, out))

    def end(self, key: str) -> None:
        resampler = self._resamplers.pop(key, None)
        if resampler is not None and len(tail := resampler.flush()):
            self._queue.append(_Piece(key, tail))
        self._ended.add(key)
        if self._playing == key and not self._queue:
            self._stopped(key)

    def flush(self) -> str | None:
        cut = self._playing or (self._queue[0].key if self._queue else None)
        self._queue.clear()
        self._resamplers.clear()
        self._playing = None
        self._ended.discard(cut or "")
        return cut

    def sent_ms(self, key: str) -> float:
        return self._sent.get(key, 0) * 1000 / RTC_RATE

    @property
    def queued_ms(self) -> float:
        return sum(len(p.pcm) - p.offset for p in self._queue) * 1000 / RTC_RATE

    # -- the aiortc side (the sender pulls a frame every 20 ms) -------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._pace()
        frame = av.AudioFrame.from_ndarray(self._take().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += FRAME_SAMPLES
        self.frames_out += 1
        return frame

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
            return
        due = self._start + self.frames_out * FRAME_MS / 1000
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -MAX_LAG_S:
            log.warning("reply track fell behind", extra={"event": "rtc_track_lag", "lag_ms": round(-wait * 1000)})
            self._start = loop.time() - self.frames_out * FRAME_MS / 1000

    def _take(self) -> PCM16:
        frame = np.zeros(FRAME_SAMPLES, np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            piece = self._queue[0]
            if piece.key != self._playing:
                self._switch(piece.key)
            count = min(FRAME_SAMPLES - filled, len(piece.pcm) - piece.offset)
            frame[filled : filled + count] = piece.pcm[piece.offset : piece.offset + count]
            piece.offset += count
            filled += count
            self._sent[piece.key] = self._sent.get(piece.key, 0) + count
            if piece.offset == len(piece.pcm):
                self._queue.popleft()
        if self._playing is not None and not self._queue and self._playing in self._ended:
            self._stopped(self._playing)
        return frame

    def _switch(self, key: str) -> None:
        if self._playing is not None:
            self._stopped(self._playing)
        self._playing = key
        if self.on_started is not None:
            self.on_started(key)

    def _stopped(self, key: str) -> None:
        self._playing = None
        self._ended.discard(key)
        if self.on_stopped is not None:
            self.on_stopped(key)
