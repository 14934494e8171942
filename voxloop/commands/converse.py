"""`voxloop converse`: one spoken conversation from a file, through the whole stage graph.

The file is streamed in 20 ms frames at real-time pace (as a microphone would deliver it),
followed by a second of silence so the VAD can close the last turn. For each turn it prints
what the user said, what the assistant answered and where the time went; the spoken replies
are written to a WAV file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.audio import decode_audio, resample, write_wav
from voxloop.pipeline.config import Settings, load_settings
from voxloop.pipeline.errors import InputError
from voxloop.pipeline.frames import AudioInput, AudioOutput, EndOfInput, ErrorFrame, ReplyDone
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.looplag import LoopLagMonitor
from voxloop.pipeline.session import Session
from voxloop.pipeline.trace import TurnTrace

if TYPE_CHECKING:
    from voxloop.engine import Engines

TRAILING_SILENCE_S = 1.0


@dataclass
class Turn:
    user: str
    assistant: str
    trace: TurnTrace


@dataclass
class ConverseResult:
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    sample_rate: int = 24000
    max_loop_lag_ms: float = 0.0
    load_s: dict[str, float] = field(default_factory=dict)

    @property
    def reply_pcm(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


async def feed(graph: Graph, session: Session, pcm: np.ndarray, frame_ms: int, realtime: bool) -> None:
    """Push the audio in frames, stamped with their arrival time, then the end of input."""
    step = 16000 * frame_ms // 1000
    silence = np.zeros(int(16000 * TRAILING_SILENCE_S), np.int16)
    audio = np.concatenate([pcm, silence])
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, offset in enumerate(range(0, len(audio), step)):
        if realtime:
            await asyncio.sleep(max(0.0, start + index * frame_ms / 1000 - loop.time()))
        await graph.push(session.make(AudioInput, pcm=audio[offset : offset + step]))
    await graph.push(session.make(EndOfInput))


async def drain(graph: Graph, session: Session, result: ConverseResult) -> None:
    """Read the graph's output like a speaker would, until the end of input comes through."""
    async for frame in graph.frames():
        session.output_sent(frame)
        if isinstance(frame, AudioOutput):
            result.audio.append(frame.pcm)
            result.sample_rate = frame.sample_rate
        elif isinstance(frame, ReplyDone):
            user = _last_user_message(session)
            result.turns.append(Turn(user, frame.text, session.finished_traces[-1]))
        elif isinstance(frame, ErrorFrame):
            result.errors.append(f"{frame.stage}: {frame.message}")
            if frame.fatal:
                return
        elif isinstance(frame, EndOfInput):
            return


def _last_user_message(session: Session) -> str:
    return next((m.content for m in reversed(session.history) if m.role == "user"), "")


async def converse(
    pcm: np.ndarray, settings: Settings, *, realtime: bool = True, engines: Engines | None = None
) -> ConverseResult:
    """Run one conversation over `pcm` (16 kHz mono int16) and return its turns and audio."""
    from voxloop.engine import Engines  # the models' libraries load only when needed

    own_engines = engines is None
    engines = engines or await Engines.load(settings, AssetStore(settings.assets.cache_dir))
    result = ConverseResult(load_s=dict(engines.load_s))
    session = Session()
    try:
        async with LoopLagMonitor() as lag, engines.graph(session) as graph:
            reader = asyncio.create_task(drain(graph, session, result))
            await feed(graph, session, pcm, settings.audio.frame_ms, realtime)
            await reader
        result.max_loop_lag_ms = lag.max_ms
    finally:
        if own_engines:
            await engines.close()
    return result


def print_result(result: ConverseResult, out: Path | None) -> None:
    for turn in result.turns:
        print(f"you:        {turn.user}")
        print(f"assistant:  {turn.assistant}")
        print(turn.trace.table())
        print()
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if not result.turns:
        print("no turn was heard in the input (no speech found, or nothing transcribed)")
    if out is not None:
        print(f"reply audio: {out} ({len(result.reply_pcm) / result.sample_rate:.1f} s)")
    print(f"max event-loop lag: {result.max_loop_lag_ms:.1f} ms")


async def spoken(text: str, engines: Engines) -> np.ndarray:
    """`text` spoken by the TTS voice at 16 kHz: a question to ask when no recording is at hand."""
    pcm, rate, _ = await engines.tts.speak(text)
    return resample(pcm, rate, 16000)


def read_input(path: Path) -> np.ndarray:
    try:
        return decode_audio(path, rate=16000)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read audio from {path}: {exc}") from None


async def converse_from_args(args: argparse.Namespace, settings: Settings) -> ConverseResult:
    from voxloop.engine import Engines

    pcm = read_input(Path(args.input)) if args.input else None
    engines = await Engines.load(settings, AssetStore(settings.assets.cache_dir))
    try:
        if pcm is None:
            pcm = await spoken(args.say, engines)
        return await converse(pcm, settings, realtime=not args.fast, engines=engines)
    finally:
        await engines.close()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    started = time.perf_counter()
    result = asyncio.run(converse_from_args(args, settings))
    if args.out:
        write_wav(Path(args.out), result.reply_pcm, result.sample_rate)
    if args.json:
        turns = [{"user": t.user, "assistant": t.assistant, **t.trace.to_dict()} for t in result.turns]
        print(json.dumps({"turns": turns, "errors": result.errors, "load_s": result.load_s}, indent=2))
    else:
        print_result(result, Path(args.out) if args.out else None)
        print(f"total: {time.perf_counter() - started:.1f} s (model load {sum(result.load_s.values()):.1f} s)")
    return 1 if result.errors and not result.turns else 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "converse", help="speak one recorded conversation to the assistant and hear its replies"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--in", dest="input", help="audio file (any format ffmpeg/av reads)")
    source.add_argument("--say", help="synthesise this text with the TTS voice and use it as the input")
    parser.add_argument("--out", help="where to write the spoken replies (WAV)")
    parser.add_argument("--config", help="settings file (default: the repo's config.yaml)")
    parser.add_argument("--fast", action="store_true", help="stream faster than real time (latencies then mean little)")
    parser.add_argument("--json", action="store_true", help="print turns and traces as JSON")
    parser.set_defaults(func=run)
