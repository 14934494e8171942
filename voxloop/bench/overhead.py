"""The pipeline's own cost, with model compute taken out.

The real stage classes (VAD endpointer, STT, LLM, chunker, TTS framing), the real graph
runner, model workers and the real wire codec run, but every model answers instantly: the VAD
reads a scripted probability per window, Whisper returns a fixed transcript, the LLM streams a
fixed reply, the voice returns a block of silence. What the process then spends is pipeline
overhead: queue hops, frame objects, thread hand-offs, resampling, framing, base64 and JSON.

Frames are pushed as fast as the graph takes them (the VAD's decisions count samples, not wall
time), so the figures are CPU per frame and wall time per turn from the endpoint to the first
reply audio leaving the graph.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from voxloop.pipeline.audio import Resampler
from voxloop.pipeline.config import Settings
from voxloop.pipeline.frames import PCM16, AudioInput, AudioOutput
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.pipeline.workers import ModelWorker, Pending
from voxloop.server import events as ev
from voxloop.stages.chunker import ChunkerStage
from voxloop.stages.llm import LlmStage
from voxloop.stages.stt import SttResult, SttStage, WhisperEngine
from voxloop.stages.tts import TtsStage
from voxloop.stages.vad import SileroVadModel, VadStage, VadStream

RATE = 16000
FRAME = RATE // 50  # 20 ms, as clients send
REPLY = "Sure. It is a quarter past four in the afternoon, and the sun is still up."


@dataclass(frozen=True, slots=True)
class Script:
    """One turn: `speech_s` of voice then `silence_s` of silence, `turns` times."""

    turns: int = 20
    speech_s: float = 1.5
    silence_s: float = 1.0

    def frames(self) -> Iterator[tuple[PCM16, bool]]:
        """(20 ms of audio, voiced?) for the whole script."""
        pcm = np.full(FRAME, 300, dtype=np.int16)
        for _ in range(self.turns):
            yield from ((pcm, True) for _ in range(round(self.speech_s * 50)))
            yield from ((pcm, False) for _ in range(round(self.silence_s * 50)))


class InstantVad:
    """Stands in for SileroVadModel: the probability of each window is read off its samples
    (a voiced frame carries non-zero samples, see `feed`), with no inference."""

    def __init__(self) -> None:
        self.worker = ModelWorker("vad-instant")

    def new_stream(self) -> VadStream:
        return VadStream(cast(SileroVadModel, self))

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        return (0.95 if window[0, -1] != 0 else 0.02), state


class InstantWhisper:
    def __init__(self) -> None:
        self.worker = ModelWorker("stt-instant")

    def start(self, pcm16: PCM16) -> Pending[SttResult]:
        return self.worker.start(lambda: SttResult("What time is it?", "en", 0.01, -0.2))

    async def atranscribe(self, pcm16: PCM16) -> SttResult:
        return await self.start(pcm16)


class InstantLlm:
    name = "instant"

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        conversation: str | None = None,
    ) -> AsyncIterator[str]:
        for word in REPLY.split(" "):
            yield word + " "

    async def prefill(
        self,
        messages: list[dict[str, str]],
        *,
        after: list[dict[str, str]] | None = None,
        conversation: str | None = None,
    ) -> None:
        pass

    def busy(self) -> bool:
        return False

    async def close(self) -> None:
        pass


class InstantVoice:
    sample_rate = 22050

    def __init__(self) -> None:
        self.worker = ModelWorker("tts-instant")

    def synthesize(self, text: str) -> Iterator[PCM16]:
        yield np.zeros(int(self.sample_rate * 0.06 * len(text.split())), dtype=np.int16)


def build_graph(session: Session, settings: Settings) -> tuple[Graph, list[ModelWorker]]:
    vad, stt, voice = InstantVad(), InstantWhisper(), InstantVoice()
    stages = [
        VadStage(session, settings.vad, cast(SileroVadModel, vad)),
        SttStage(session, settings.stt, cast(WhisperEngine, stt)),
        LlmStage(session, settings.llm, InstantLlm()),
        ChunkerStage(session, settings.chunker),
        TtsStage(session, settings.tts, voice, settings.audio.output_sample_rate),
    ]
    return Graph(session, stages), [vad.worker, stt.worker, voice.worker]


def wire_cost_ms(frames: int = 2000) -> dict[str, float]:
    """CPU per 20 ms frame of the WebSocket path: an append event at 24 kHz parsed, decoded and
    resampled to 16 kHz; 40 ms of reply audio resampled to 24 kHz and encoded as a delta event."""
    pcm24 = (np.sin(np.arange(480) / 7) * 3000).astype(np.int16)
    text = json.dumps({"type": "input_audio_buffer.append", "audio": ev.encode_pcm(pcm24)})
    inbound, outbound = Resampler(24000, RATE), Resampler(RATE, 24000)
    reply = np.zeros(640, dtype=np.int16)
    start = time.process_time()
    for _ in range(frames):
        inbound.push(ev.decode_pcm(ev.parse_event(text)["audio"]))
    inbound_ms = (time.process_time() - start) * 1000 / frames
    start = time.process_time()
    for _ in range(frames // 2):
        json.dumps(ev.server_event("response.output_audio.delta", delta=ev.encode_pcm(outbound.push(reply))))
    outbound_ms = (time.process_time() - start) * 1000 / frames  # per input frame: half as many 40 ms frames
    return {"inbound_ms": round(inbound_ms, 4), "outbound_ms": round(outbound_ms, 4)}


async def stream(script: Script, settings: Settings) -> tuple[float, int, list[float]]:
    """Stream the script through the instant graph: (CPU seconds, frames, endpoint → first audio ms per turn)."""
    session = Session()
    graph, workers = build_graph(session, settings)
    per_turn_ms: list[float] = []
    frames = 0
    all_answered = asyncio.Event()
    expected = script.turns if script.speech_s else 0

    async def drain() -> None:
        async for frame in graph.frames():
            session.output_sent(frame)
            reply_began = isinstance(frame, AudioOutput) and len(per_turn_ms) < session.trace.turn_id
            if reply_began and "first_audio_sent" in session.trace.marks:
                per_turn_ms.append(session.trace.ms("endpoint", "first_audio_sent") or 0.0)
                if len(per_turn_ms) >= expected:
                    all_answered.set()

    cpu0 = time.process_time()
    try:
        async with graph:
            reader = asyncio.create_task(drain(), name="overhead-drain")
            try:
                for pcm, voiced in script.frames():
                    await graph.push(session.make(AudioInput, pcm=pcm if voiced else np.zeros_like(pcm)))
                    frames += 1
                    await asyncio.sleep(0)  # let the reply side run between frames, as a socket read would
                if expected:
                    await asyncio.wait_for(all_answered.wait(), timeout=60)
            finally:
                await cancel_and_wait(reader)
    finally:
        for worker in workers:
            worker.shutdown()
    return time.process_time() - cpu0, frames, per_turn_ms


async def measure(script: Script, settings: Settings) -> dict[str, Any]:
    """Per-frame cost from a run without speech, per-turn cost from the same frames with turns."""
    quiet_cpu, quiet_frames, _ = await stream(Script(script.turns, 0.0, script.speech_s + script.silence_s), settings)
    cpu, frames, per_turn_ms = await stream(script, settings)
    per_frame_ms = quiet_cpu * 1000 / quiet_frames
    turns = max(1, len(per_turn_ms))
    return {
        "frames": frames,
        "turns": len(per_turn_ms),
        "graph_cpu_ms_per_frame": round(per_frame_ms, 4),
        "wire_cpu_ms_per_frame": wire_cost_ms(),
        "turn_cpu_ms": round((cpu * 1000 - per_frame_ms * frames) / turns, 2),
        "turn_latency_ms": {
            "p50": round(statistics.median(per_turn_ms), 2) if per_turn_ms else None,
            "max": round(max(per_turn_ms), 2) if per_turn_ms else None,
        },
    }
