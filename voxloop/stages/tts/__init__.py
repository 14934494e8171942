"""Text to speech: the engine contract, and the one streaming stage every engine shares.

    ReplyChunk ─► engine.synthesize (in the engine's ModelWorker) ─► resample ─► fixed frames
               ─► AudioOutput × n

An engine (Piper here; XTTS or a cloud voice later) only turns text into PCM blocks at its own
rate, as soon as it has them. The stage streams those blocks out of the worker, so cancelling
the stage (barge-in) stops synthesis at the engine's next block, resamples them to the
session's output rate and cuts them into frames of `frame_ms` for the transport.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import numpy as np

from voxloop.pipeline.audio import Resampler
from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.frames import PCM16, AudioOutput, Frame, ReplyChunk
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.workers import ModelWorker


class TtsEngine(Protocol):
    """A loaded voice, shared by every session."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def worker(self) -> ModelWorker:
        """Where `synthesize` runs; it must never run on the event loop."""
        ...

    def synthesize(self, text: str) -> Iterator[PCM16]:
        """Blocking: mono int16 blocks at `sample_rate`, each yielded as soon as it is ready."""
        ...


# --- pure core ------------------------------------------------------------------------------


class FrameSlicer:
    """Cuts a stream of PCM pieces into frames of exactly `size` samples."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"frame size must be at least one sample, got {size}")
        self.size = size
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, pcm: PCM16) -> list[PCM16]:
        data = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        whole = len(data) // self.size * self.size
        self._pending = data[whole:].copy()
        return [data[i : i + self.size] for i in range(0, whole, self.size)]

    def flush(self) -> list[PCM16]:
        """The remainder as one last frame, padded with silence so every frame has one size."""
        if not len(self._pending):
            return []
        last = np.zeros(self.size, dtype=np.int16)
        last[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.int16)
        return [last]


class ChunkAudio:
    """One reply chunk's audio on its way out: resampled as a stream, then sliced into frames."""

    def __init__(self, src_rate: int, dst_rate: int, frame_samples: int) -> None:
        self._resampler = Resampler(src_rate, dst_rate)
        self._slicer = FrameSlicer(frame_samples)

    def push(self, pcm: PCM16) -> list[PCM16]:
        return self._slicer.push(self._resampler.push(pcm))

    def finish(self) -> list[PCM16]:
        return self._slicer.push(self._resampler.flush()) + self._slicer.flush()


def frame_samples(rate: int, frame_ms: int) -> int:
    return max(1, round(rate * frame_ms / 1000))


# --- the stage ------------------------------------------------------------------------------


class TtsStage(StageBase):
    """ReplyChunk → AudioOutput frames of `settings.frame_ms` at `output_sample_rate`.

    ReplyDone is not handled: the runner forwards it after the audio of the last chunk. All
    partial state (resampler, unsent samples) lives in the running `process` call, which the
    runner cancels on interrupt, so `reset` has nothing left to drop.
    """

    name = "tts"
    handles: tuple[type[Frame], ...] = (ReplyChunk,)

    def __init__(self, session: Session, settings: TtsSettings, engine: TtsEngine, output_sample_rate: int) -> None:
        self.session = session
        self.settings = settings
        self.engine = engine
        self.output_sample_rate = output_sample_rate
        self.frame_samples = frame_samples(output_sample_rate, settings.frame_ms)

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if not isinstance(frame, ReplyChunk) or not frame.text.strip():
            return
        audio = ChunkAudio(self.engine.sample_rate, self.output_sample_rate, self.frame_samples)
        first = True
        blocks = self.engine.worker.stream(functools.partial(self.engine.synthesize, frame.text))
        # aclosing: when this generator is closed or cancelled, the synthesis stops now.
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                for pcm in audio.push(block):
                    yield self._output(pcm, frame, first)
                    first = False
        for pcm in audio.finish():
            yield self._output(pcm, frame, first)
            first = False

    def _output(self, pcm: PCM16, chunk: ReplyChunk, first: bool) -> AudioOutput:
        if first:
            self.session.mark("tts_first_audio")  # set once per turn; later chunks are no-ops
        out = self.session.make(
            AudioOutput,
            pcm=pcm,
            sample_rate=self.output_sample_rate,
            chunk_index=chunk.index,
            chunk_text=chunk.text,
        )
        # The audio belongs to the chunk's turn and epoch: if that epoch is interrupted while
        # the audio is still queued, the runner drops it with the chunk.
        out.turn_id, out.epoch = chunk.turn_id, chunk.epoch
        return out
