"""Text to speech: the one streaming stage every voice shares.

    ReplyChunk ─► VoiceRouter.stream(text, voice) ─► resample ─► fixed frames ─► AudioOutput × n
                  (router.py: fallback chain, deadlines, health, cache; providers: piper.py, cloud/, xtts)

Providers turn text into PCM blocks at their own rate, as soon as they have them. The stage
streams those blocks, so cancelling it (barge-in) stops synthesis at the provider's next
block; it resamples them to the session's output rate (a new resampler whenever the rate
changes: a fallback voice may speak at another) and cuts them into frames of `frame_ms`. The
trace notes which voice and provider spoke (`tts_voice`, `tts_provider`, `tts_fallback`).

A bare TtsEngine (one blocking voice, e.g. a PiperEngine) is still accepted in place of the
router, for tests and tools that need no fallback.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from voxloop.pipeline.audio import Resampler
from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.frames import PCM16, AudioOutput, Frame, ReplyChunk
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.workers import ModelWorker, Priority, work_priority

if TYPE_CHECKING:
    from voxloop.stages.tts.router import Spoken


class Speaker(Protocol):
    """What the stage speaks through: the VoiceRouter (router.py)."""

    def stream(self, text: str, voice: str | None = None) -> AsyncGenerator[Spoken, None]: ...


@runtime_checkable
class TtsEngine(Protocol):
    """A single loaded voice, shared by every session (the stage wraps it as a Speaker)."""

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


class EngineSpeaker:
    """A TtsEngine as a Speaker: its blocks streamed out of its worker, under one fixed name."""

    def __init__(self, engine: TtsEngine, name: str = "engine") -> None:
        self.engine, self.name = engine, name

    async def stream(self, text: str, voice: str | None = None) -> AsyncGenerator[Spoken, None]:
        from voxloop.stages.tts.router import Spoken

        blocks = self.engine.worker.stream(functools.partial(self.engine.synthesize, text))
        async with contextlib.aclosing(blocks):
            async for pcm in blocks:
                yield Spoken(pcm, self.engine.sample_rate, voice or self.name, self.name)


class TtsStage(StageBase):
    """ReplyChunk → AudioOutput frames of `settings.frame_ms` at `output_sample_rate`.

    The voice is the session's (`session.voice`, which a client sets with session.update),
    else `voice`, else the router's default. ReplyDone is not handled: the runner forwards
    it after the audio of the last chunk. All partial state (resampler, unsent samples) lives
    in the running `process` call, which the runner cancels on interrupt, so `reset` has
    nothing left to drop.
    """

    name = "tts"
    handles: tuple[type[Frame], ...] = (ReplyChunk,)

    def __init__(
        self,
        session: Session,
        settings: TtsSettings,
        speech: Speaker | TtsEngine,
        output_sample_rate: int,
        *,
        voice: str | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.speech: Speaker = EngineSpeaker(speech) if isinstance(speech, TtsEngine) else speech
        self.output_sample_rate = output_sample_rate
        self.frame_samples = frame_samples(output_sample_rate, settings.frame_ms)
        self.voice = voice

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if not isinstance(frame, ReplyChunk) or not frame.text.strip():
            return
        # The first clause is what the user waits for; later ones are made while it plays, so
        # another session's first clause may go ahead of them (pipeline/workers.py).
        with work_priority(Priority.LIVE if frame.index == 0 else Priority.AHEAD):
            async with contextlib.aclosing(self._speak(frame)) as outputs:
                async for out in outputs:
                    yield out

    async def _speak(self, frame: ReplyChunk) -> AsyncGenerator[Frame, None]:
        audio: ChunkAudio | None = None
        rate, first = 0, True
        blocks = self.speech.stream(frame.text, self.session.voice or self.voice)
        # aclosing: when this generator is closed or cancelled, the synthesis stops now.
        async with contextlib.aclosing(blocks):
            async for spoken in blocks:
                if audio is None or spoken.sample_rate != rate:
                    tail = audio.finish() if audio is not None else []
                    audio, rate = (
                        ChunkAudio(spoken.sample_rate, self.output_sample_rate, self.frame_samples),
                        spoken.sample_rate,
                    )
                    self._note(spoken)
                    for pcm in tail:
                        yield self._output(pcm, frame, first)
                        first = False
                for pcm in audio.push(spoken.pcm):
                    yield self._output(pcm, frame, first)
                    first = False
        for pcm in audio.finish() if audio is not None else []:
            yield self._output(pcm, frame, first)
            first = False

    def _note(self, spoken: Spoken) -> None:
        """The trace says who spoke the turn's first chunk, and whether anything fell back."""
        notes = self.session.trace.notes
        notes.setdefault("tts_voice", spoken.voice)
        notes.setdefault("tts_provider", spoken.provider)
        notes["tts_fallback"] = bool(notes.get("tts_fallback")) or spoken.fallback

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
