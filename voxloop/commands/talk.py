"""`voxloop talk`: speak a recording to a running `voxloop serve` over the realtime protocol.

The file is decoded, resampled to the session rate and streamed in 20 ms appends at real-time
pace, as a microphone would send it, followed by 1.5 s of silence so the server's VAD closes
the last turn (or, with --manual, by a commit and a response.create). Every server event is
printed as one line (reply audio summarised per response); the reply audio is written to a
WAV file and each turn's latency trace is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from voxloop.client import BINARY_AUDIO, DEFAULT_RATE, ClientError, Event, RealtimeClient, Received, silence
from voxloop.pipeline.audio import decode_audio, write_wav
from voxloop.pipeline.errors import InputError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.pipeline.trace import TurnTrace
from voxloop.server.events import ACCEPTED_RATES

DEFAULT_URL = "ws://127.0.0.1:8765/v1/realtime"
TRAILING_SILENCE_S = 1.5
NOTHING_HEARD_S = 3.0  # after the input ended with no speech heard, stop waiting
AUDIO_EVENTS = ("response.output_audio.delta", BINARY_AUDIO)


@dataclass
class TalkOptions:
    url: str = DEFAULT_URL
    rate: int = DEFAULT_RATE
    binary: bool = False
    manual: bool = False
    timeout_s: float = 30.0


@dataclass
class TalkResult:
    events: list[Event] = field(default_factory=list)
    audio: PCM16 = field(default_factory=lambda: np.zeros(0, np.int16))
    rate: int = DEFAULT_RATE
    timed_out: bool = False

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def completed(self) -> int:
        return sum(e["response"]["status"] == "completed" for e in self.of_type("response.done"))


class EventPrinter:
    """One line per server event; audio messages are counted and summarised once per response."""

    def __init__(self, out: TextIO, rate: int, start: float) -> None:
        self.out, self.rate, self.start = out, rate, start
        self.audio_messages, self.audio_samples = 0, 0
        self.shown = 0  # how many of the client's messages have been shown

    def show_new(self, client: RealtimeClient) -> None:
        for item in client.received[self.shown :]:
            self.show(item)
        self.shown = len(client.received)

    def show(self, item: Received) -> None:
        event = item.event
        kind = str(event.get("type"))
        if kind in AUDIO_EVENTS:
            self.audio_messages += 1
            self.audio_samples += _samples(event)
            return
        if kind in ("response.output_audio.done", "response.done") and self.audio_messages:
            seconds = self.audio_samples / self.rate
            self._line(item.at, "(reply audio)", f"{self.audio_messages} messages, {seconds:.2f} s")
            self.audio_messages, self.audio_samples = 0, 0
        self._line(item.at, kind, describe(event))

    def _line(self, at: float, kind: str, detail: str) -> None:
        print(f"{at - self.start:7.2f}s  {kind:<55} {detail}".rstrip(), file=self.out, flush=True)


def _samples(event: Event) -> int:
    if "bytes" in event:
        return int(event["bytes"]) // 2
    return len(str(event.get("delta", ""))) * 3 // 8  # base64 length → bytes → samples


def describe(event: Event) -> str:
    """The few fields of an event worth a glance, on one line."""
    kind = event.get("type")
    if kind in ("session.created", "session.updated"):
        audio = event["session"]["audio"]
        detection = audio["input"]["turn_detection"]
        turns = "manual" if detection is None else detection["type"]
        return f"in {audio['input']['format']['rate']} Hz, out {audio['output']['format']['rate']} Hz, turns {turns}"
    if kind == "conversation.item.input_audio_transcription.completed":
        return f"you: {event['transcript']!r}"
    if kind == "response.output_audio_transcript.delta":
        return f"assistant: {event['delta'].strip()!r}"
    if kind in ("response.created", "response.done"):
        return f"{event['response']['id']} {event['response']['status']}"
    if kind == "error":
        return f"{event['error']['code']}: {event['error']['message']}"
    if kind == "voxloop.state":
        return str(event["state"])
    if kind == "voxloop.trace":
        total = event["trace"].get("voice_to_voice_ms")
        return f"turn {event['trace']['turn_id']}" + (f", voice-to-voice {total:.0f} ms" if total is not None else "")
    return " ".join(f"{name}={event[name]}" for name in ("audio_start_ms", "audio_end_ms") if name in event)


def trace_table(trace: dict[str, Any]) -> str:
    """The terminal table of a `voxloop.trace` event's trace (TurnTrace.table from its marks)."""
    marks = {name: round(ms * 1e6) for name, ms in trace.get("marks_ms", {}).items()}
    return TurnTrace(str(trace.get("session_id", "")), int(trace.get("turn_id", 0)), marks).table()


def settled(client: RealtimeClient) -> bool | None:
    """Every turn heard has its reply done and its trace sent (or was empty); None: nothing heard yet."""
    last: dict[str, int] = {}
    for item in client.received:
        last[str(item.event.get("type"))] = item.index
    started = last.get("input_audio_buffer.speech_started", -1)
    committed = last.get("input_audio_buffer.committed", -1)
    created = last.get("response.created", -1)
    done = last.get("response.done", -1)
    if max(started, committed, created) < 0:
        return None
    if started > committed or created > done:
        return False  # the user is still speaking, or a reply is in flight
    if committed > done:
        heard = client.find("conversation.item.input_audio_transcription.completed", since=committed)
        return heard is not None and not heard.event["transcript"].strip() and created < committed
    return last.get("voxloop.trace", -1) > done


async def wait_settled(client: RealtimeClient, within: float) -> bool:
    """Wait until `settled`, or NOTHING_HEARD_S if nothing is heard at all; False after `within` s."""
    start = time.monotonic()
    while True:
        cursor, state, now = client.mark, settled(client), time.monotonic()
        if state or (state is None and now - start >= NOTHING_HEARD_S):
            return True
        if now - start >= within:
            return False
        wake = start + (min(within, NOTHING_HEARD_S) if state is None else within)
        try:
            await client.wait_received(None, within=max(0.01, wake - now), since=cursor)
        except ClientError:
            if client.closed:
                raise


async def follow(client: RealtimeClient, printer: EventPrinter) -> None:
    """Print each message as it arrives, until the connection closes."""
    while True:
        try:
            await client.wait_received(None, within=3600, since=printer.shown)
        except ClientError:
            return  # the connection closed: the caller reports it
        printer.show_new(client)


async def speak(client: RealtimeClient, pcm: PCM16, options: TalkOptions) -> bool:
    """Set the session up, speak `pcm`, and wait for the replies; False on timeout."""
    detection: dict[str, Any] = {} if not options.manual else {"turn_detection": None}
    fmt = {"type": "audio/pcm", "rate": options.rate}
    await client.update_session({"audio": {"input": {"format": fmt, **detection}, "output": {"format": fmt}}})
    if options.binary:
        await client.enable_binary()
    await client.stream(pcm, rate=options.rate)
    if options.manual and await commit(client):
        await client.send({"type": "response.create"})
    elif not options.manual:
        await client.stream(silence(TRAILING_SILENCE_S, options.rate), rate=options.rate)
    return await wait_settled(client, options.timeout_s)


async def commit(client: RealtimeClient) -> bool:
    """Commit the manual turn; False if the server refused it (the error is printed with the events)."""
    since = client.mark
    await client.send({"type": "input_audio_buffer.commit"})
    answer = await client.wait_received(
        None, within=10, since=since, where=lambda e: e["type"] in ("input_audio_buffer.committed", "error")
    )
    return bool(answer.event["type"] != "error")


async def talk(pcm: PCM16, options: TalkOptions, out: TextIO = sys.stdout) -> TalkResult:
    """Speak `pcm` (mono int16 at `options.rate`) to the server; print events as they come."""
    async with await RealtimeClient.connect(options.url) as client:
        await client.wait_for("session.created", within=10)
        printer = EventPrinter(out, options.rate, client.received[0].at)
        follower = asyncio.create_task(follow(client, printer), name="talk-printer")
        try:
            finished = await speak(client, pcm, options)
        finally:
            await cancel_and_wait(follower)
        printer.show_new(client)
        order = [e["response"]["id"] for e in client.of_type("response.created")]
        pieces = [client.reply_audio(response_id) for response_id in order]
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.int16)
        return TalkResult(client.events, audio, options.rate, timed_out=not finished)


def read_input(path: Path, rate: int) -> PCM16:
    try:
        return decode_audio(path, rate=rate)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read audio from {path}: {exc}") from None


def report(result: TalkResult, out_path: Path | None, timeout_s: float) -> None:
    for event in result.of_type("voxloop.trace"):
        print(f"\nturn {event['trace']['turn_id']}:")
        print(trace_table(event["trace"]))
    if out_path is not None:
        print(f"\nreply audio: {out_path} ({len(result.audio) / result.rate:.1f} s)")
    if result.timed_out:
        print(f"voxloop talk: gave up waiting for the reply after {timeout_s:.0f} s (--timeout)", file=sys.stderr)
    elif not result.completed:
        print("voxloop talk: no reply: the server heard no speech, or refused the input (see above)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    options = TalkOptions(args.url, args.rate, args.binary, args.manual, args.timeout)
    pcm = read_input(Path(args.wav), options.rate)
    pcm = np.concatenate([silence(0.3, options.rate), pcm])  # a moment of silence, as a microphone opens
    result = asyncio.run(talk(pcm, options))
    out_path = Path(args.out) if args.out else None
    if out_path is not None:
        write_wav(out_path, result.audio, result.rate)
    report(result, out_path, options.timeout_s)
    return 0 if result.completed and not result.timed_out else 1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "talk", help="stream a recording to a running voxloop server and save its spoken reply"
    )
    parser.add_argument("--wav", required=True, help="audio file to speak (any format ffmpeg/av reads)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server's realtime endpoint (default: {DEFAULT_URL})")
    parser.add_argument("--out", help="where to write the reply audio (WAV at the session rate)")
    parser.add_argument(
        "--rate", type=int, default=DEFAULT_RATE, choices=ACCEPTED_RATES, help="session audio rate (default 24000)"
    )
    parser.add_argument("--binary", action="store_true", help="send and receive audio as binary frames")
    parser.add_argument("--manual", action="store_true", help="no server VAD: commit and ask for the reply")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for replies after the input")
    parser.set_defaults(func=run)
