"""Scripted fake stages for testing timing logic on a virtual clock.

Each fake waits on `asyncio.sleep`, so under a time-faking event loop (the `looptime` pytest
plugin) a script of delays runs instantly yet the loop's clock reads exactly as scripted.
They follow the same frame contract as the real stages, marks included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

import numpy as np

from voxloop.pipeline.frames import (
    AudioOutput,
    EndOfInput,
    Frame,
    ReplyChunk,
    ReplyDone,
    ReplyText,
    SpeechEnded,
    Transcript,
)
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase


class NoWords(StageBase):
    """Stands in for an STT that hears no words in any utterance: the session goes back to
    listening, as it would after noise. For testing the stages before the STT on their own."""

    name = "no-words"
    handles = (SpeechEnded,)

    def __init__(self, session: Session) -> None:
        self.session = session

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, SpeechEnded) and frame.final:  # a speculative end is the STT's alone
            self.session.utterance_dropped()
            yield frame


class ScriptedLlm(StageBase):
    """Answers every final transcript (and the early one of a speculative reply) with `reply`,
    one word per `token_s` after `first_token_s`."""

    name = "llm"
    handles = (Transcript,)

    def __init__(self, session: Session, reply: str, *, first_token_s: float = 0.2, token_s: float = 0.03):
        self.session, self.reply = session, reply
        self.first_token_s, self.token_s = first_token_s, token_s
        self.cancelled = 0

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        yield frame  # like the real LLM stage, pass the user's words on
        if isinstance(frame, Transcript) and not (frame.final or self.session.speculating(frame)):
            return
        try:
            await asyncio.sleep(self.first_token_s)
            for index, word in enumerate(self.reply.split(" ")):
                if index:
                    await asyncio.sleep(self.token_s)
                else:
                    self.session.mark("llm_first_token")
                yield self.session.make(ReplyText, text=(" " if index else "") + word)
            yield self.session.make(ReplyDone, text=self.reply)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class WordChunker(StageBase):
    """Releases a chunk every `words` words; flushes on ReplyDone."""

    name = "chunker"
    handles = (ReplyText, ReplyDone)

    def __init__(self, session: Session, words: int = 4) -> None:
        self.session, self.words = session, words
        self._buffer: list[str] = []
        self._index = 0

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, ReplyText):
            self._buffer.extend(frame.text.split())
            if len(self._buffer) >= self.words:
                yield self._chunk()
        elif isinstance(frame, ReplyDone):
            if self._buffer:
                yield self._chunk()
            self._index = 0
            yield frame

    def _chunk(self) -> ReplyChunk:
        self.session.mark("first_chunk")
        chunk = self.session.make(ReplyChunk, text=" ".join(self._buffer), index=self._index)
        self._buffer, self._index = [], self._index + 1
        return chunk

    async def reset(self) -> None:
        self._buffer, self._index = [], 0


class ScriptedTts(StageBase):
    """Speaks each chunk as `frames_per_chunk` frames of `frame_s`, after `first_audio_s`."""

    name = "tts"
    handles = (ReplyChunk,)

    def __init__(
        self,
        session: Session,
        *,
        first_audio_s: float = 0.1,
        frame_s: float = 0.04,
        frames_per_chunk: int = 10,
        sample_rate: int = 16000,
    ) -> None:
        self.session = session
        self.first_audio_s, self.frame_s = first_audio_s, frame_s
        self.frames_per_chunk, self.sample_rate = frames_per_chunk, sample_rate
        self.cancelled = 0

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, ReplyChunk)
        samples = int(self.frame_s * self.sample_rate)
        try:
            await asyncio.sleep(self.first_audio_s)
            for _ in range(self.frames_per_chunk):
                self.session.mark("tts_first_audio")
                pcm = np.full(samples, 1000, dtype=np.int16)
                yield self.session.make(
                    AudioOutput,
                    pcm=pcm,
                    sample_rate=self.sample_rate,
                    chunk_index=frame.index,
                    chunk_text=frame.text,
                )
                await asyncio.sleep(self.frame_s / 4)  # synthesis runs 4x faster than real time
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def fake_reply_stages(session: Session, reply: str) -> Sequence[StageBase]:
    return [ScriptedLlm(session, reply), WordChunker(session), ScriptedTts(session)]


async def replay(graph: Graph, frames: Iterable[Frame]) -> list[Frame]:
    """Push `frames` then an EndOfInput, reading the output meanwhile; returns what came out
    before the end of input did."""

    async def feed() -> None:
        for frame in frames:
            await graph.push(frame)
        await graph.push(EndOfInput(session_id=graph.session.id))

    feeder = asyncio.create_task(feed())
    out: list[Frame] = []
    try:
        async for frame in graph.frames():
            if isinstance(frame, EndOfInput):
                break
            out.append(frame)
    finally:
        await feeder
    return out
