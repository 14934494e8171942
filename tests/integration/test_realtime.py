"""The realtime WebSocket server, end to end: a real `voxloop serve` on a free port, real models,
real recordings from ../shared/eval streamed at real-time pace by voxloop.client."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import pytest

from tests.integration.servers import ServerProcess, free_port
from voxloop.client import BINARY_AUDIO, ClientError, Event, RealtimeClient, Received, silence
from voxloop.pipeline.audio import decode_audio
from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.tasks import cancel_and_wait

pytestmark = pytest.mark.integration

TURN_S = 40.0  # bound on one spoken turn's reply on a busy 2-core machine (typically 2-4 s)
AMIABLE = "librivox_ss01_0930"  # "he might even have been made amiable himself" (3.3 s)
FORWARD = "psphinx_goforward"  # "go forward ten meters" (2.8 s)
CARDS = "psphinx_cards_005"  # "eight of spades four of clubs seven of hearts" (3.5 s)
ILL = "librivox_ss01_0880"  # "he was not an ill disposed young man" (3.0 s)
AUDIO = "response.output_audio.delta"
STORYTELLER = "You are a storyteller. Always answer with a long story of at least five sentences."


# -- helpers ----------------------------------------------------------------------------------


def words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def wer(reference: str, heard: str) -> float:
    return float(jiwer.wer(words(reference), words(heard) or "<nothing>"))


def cer(reference: str, heard: str) -> float:
    return float(jiwer.cer(words(reference), words(heard) or "<nothing>"))


Clip = Callable[..., tuple[PCM16, str]]


@pytest.fixture(scope="module")
def clip(eval_dir: Path, manifest: list[dict[str, str]]) -> Clip:
    """clip(id, rate=24000) → (mono int16 at `rate`, normalised reference transcript)."""
    rows = {row["id"]: row for row in manifest}

    def load(clip_id: str, rate: int = 24000) -> tuple[PCM16, str]:
        row = rows[clip_id]
        return decode_audio(eval_dir / row["file"], rate=rate), row["transcript_norm"]

    return load


def from_onset(pcm: PCM16, rate: int) -> PCM16:
    """The clip from 0.1 s before its first sample within 35 dB of the peak (its speech onset)."""
    level = np.abs(pcm.astype(np.int32))
    onset = int(np.argmax(level > level.max() * 10 ** (-35 / 20)))
    return pcm[max(0, onset - rate // 10) :]


async def say(client: RealtimeClient, pcm: PCM16, rate: int = 24000) -> None:
    """Speak like a microphone would: a moment of silence, the words, then silence to end the turn."""
    await client.stream(np.concatenate([silence(0.3, rate), pcm, silence(1.5, rate)]), rate=rate)


def index_of(client: RealtimeClient, kind: str, where: Callable[[Event], bool] | None = None) -> int:
    found = client.find(kind, where=where)
    assert found is not None, f"no {kind} among {[e['type'] for e in client.events]}"
    return found.index


def errors(client: RealtimeClient) -> list[Event]:
    return [e["error"] for e in client.of_type("error")]


# -- (1) a spoken turn ----------------------------------------------------------------------


async def test_a_spoken_turn_gets_every_event_and_a_spoken_reply(server: ServerProcess, clip: Clip) -> None:
    pcm, reference = clip(AMIABLE)
    async with await RealtimeClient.connect(server.ws_url) as client:
        created = await client.wait_for("session.created", within=10)
        assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        await say(client, pcm)
        done, trace = await client.wait_turn(within=TURN_S)

    order = [
        index_of(client, kind)
        for kind in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            "response.output_audio.delta",
            "response.output_audio.done",
            "response.done",
            "voxloop.trace",
        )
    ]
    assert order == sorted(order)
    started, stopped = (
        client.of_type("input_audio_buffer.speech_started"),
        client.of_type("input_audio_buffer.speech_stopped"),
    )
    assert len(started) == len(stopped) == 1
    assert 0 <= started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] <= 300 + len(pcm) / 24 + 100
    transcription = client.of_type("conversation.item.input_audio_transcription.completed")[0]
    assert (
        transcription["item_id"]
        == started[0]["item_id"]
        == client.of_type("input_audio_buffer.committed")[0]["item_id"]
    )
    assert wer(reference, transcription["transcript"]) < 0.3

    response_id = done["response"]["id"]
    assert done["response"]["status"] == "completed"
    assert all(e["response_id"] == response_id for e in client.of_type("response.output_audio.delta"))
    assert len(client.reply_audio(response_id)) / 24000 > 0.5
    spoken = client.of_type("response.output_audio_transcript.done")[0]["transcript"]
    assert spoken.strip()  # SmolLM2 is weak: any words will do
    assert done["response"]["output"][0]["content"][0]["transcript"] == spoken

    assert trace["trace"]["voice_to_voice_ms"] is not None and 0 < trace["trace"]["voice_to_voice_ms"] < TURN_S * 1000
    assert {"endpoint_delay", "stt", "llm_first_token", "tts_first_audio"} <= set(trace["trace"]["spans_ms"])
    assert errors(client) == []


# -- (2) sessions stay separate -------------------------------------------------------------


async def _one_turn(url: str, pcm: PCM16) -> RealtimeClient:
    client = await RealtimeClient.connect(url)
    try:
        await client.wait_for("session.created", within=10)
        await say(client, pcm)
        await client.wait_turn(within=TURN_S)
    finally:
        await client.close()
    return client


async def test_turn_detection_settings_retune_this_sessions_vad(server: ServerProcess, clip: Clip) -> None:
    pcm, _ = clip(FORWARD)
    async with await RealtimeClient.connect(server.ws_url) as client:
        await client.wait_for("session.created", within=10)
        detection = {"type": "server_vad", "silence_duration_ms": 250, "prefix_padding_ms": 200, "threshold": 0.6}
        updated = await client.update_session({"audio": {"input": {"turn_detection": detection}}})
        described = updated["session"]["audio"]["input"]["turn_detection"]
        assert (described["silence_duration_ms"], described["prefix_padding_ms"]) == (250, 200)
        assert described["threshold"] == 0.6
        await say(client, pcm)
        _, trace = await client.wait_turn(within=TURN_S)
    # The endpoint comes one (shorter) silence after the speech, not the configured 500 ms.
    assert 180 <= trace["trace"]["spans_ms"]["endpoint_delay"] < 400  # arrival jitter: not exact


async def test_two_concurrent_sessions_hear_and_answer_only_their_own_speaker(
    server: ServerProcess, clip: Clip
) -> None:
    (amiable, amiable_ref), (forward, forward_ref) = clip(AMIABLE), clip(FORWARD)
    a, b = await asyncio.gather(_one_turn(server.ws_url, amiable), _one_turn(server.ws_url, forward))

    def heard(client: RealtimeClient) -> list[str]:
        return [e["transcript"] for e in client.of_type("conversation.item.input_audio_transcription.completed")]

    assert len(heard(a)) == len(heard(b)) == 1
    assert wer(amiable_ref, heard(a)[0]) < 0.3 and wer(forward_ref, heard(b)[0]) < 0.3
    assert wer(forward_ref, heard(a)[0]) > 0.7 and wer(amiable_ref, heard(b)[0]) > 0.7
    session_ids = {c.of_type("session.created")[0]["session"]["id"] for c in (a, b)}
    assert len(session_ids) == 2
    for mine, other in ((a, b), (b, a)):
        responses = {e["response"]["id"] for e in mine.of_type("response.created")}
        others = {e["response"]["id"] for e in other.of_type("response.created")}
        assert len(responses) == 1 and not responses & others
        assert {e["response_id"] for e in mine.of_type("response.output_audio.delta")} == responses
        assert len(mine.reply_audio(responses.pop())) / 24000 > 0.5
        assert errors(mine) == []


# -- (3) barge-in -----------------------------------------------------------------------------


@dataclass
class BargeIn:
    response_id: str
    first_audio: Received  # the interrupted reply's first audio
    sent_at: float  # time.monotonic() when the interrupting speech began to be sent
    truncated: Event


def item_of(client: RealtimeClient, response_id: str) -> str:
    return str(
        next(e["item"]["id"] for e in client.of_type("response.output_item.added") if e["response_id"] == response_id)
    )


async def _truncate(client: RealtimeClient, response_id: str, audio_end_ms: int) -> Event:
    """As a client does on barge-in: say how much of the cut reply it played."""
    since = client.mark
    item_id = item_of(client, response_id)
    await client.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}
    )
    return await client.wait_for("conversation.item.truncated", within=5, since=since)


async def _ask_until_answered(client: RealtimeClient, question: PCM16, since: int) -> Received:
    """Speak `question`, then keep the microphone open on silence only until the reply's first
    audio arrives, so the interruption can follow at once. (Streaming a fixed tail of silence
    first let a fast machine finish the whole reply before the interruption began.)"""
    await client.stream(np.concatenate([silence(0.3), question]))
    answered = asyncio.create_task(client.wait_received(AUDIO, within=TURN_S, since=since))
    try:
        while not answered.done():
            await client.stream(silence(0.04))
        return await answered
    finally:
        await cancel_and_wait(answered)


async def _barge_in(client: RealtimeClient, question: PCM16, interruption: PCM16) -> BargeIn | None:
    """Ask, then speak over the reply's audio; None if the reply finished before the VAD heard it."""
    since = client.mark
    first_audio = await _ask_until_answered(client, question, since)
    response_id = first_audio.event["response_id"]
    sent_at = time.monotonic()
    speaking = asyncio.create_task(client.stream(np.concatenate([interruption, silence(1.5)])))
    try:
        done = await client.wait_received(
            "response.done", within=TURN_S, since=since, where=lambda e: e["response"]["id"] == response_id
        )
        cancelled = done.event["response"]["status"] == "cancelled"
        truncated = await _truncate(client, response_id, 400) if cancelled else {}
        await speaking
    finally:
        await cancel_and_wait(speaking)
    if cancelled:
        return BargeIn(response_id, first_audio, sent_at, truncated)
    await client.wait_turn(within=TURN_S, since=done.index + 1)  # the interruption's own reply
    return None


async def test_barge_in_cancels_the_reply_and_stops_its_audio(server: ServerProcess, clip: Clip) -> None:
    question, _ = clip(AMIABLE)
    interruption, interruption_ref = clip(FORWARD)
    interruption = from_onset(interruption, 24000)
    async with await RealtimeClient.connect(server.ws_url) as client:
        updated = await client.update_session({"instructions": STORYTELLER, "max_output_tokens": 200})
        assert updated["session"]["max_output_tokens"] == 200  # a long reply, still speaking when interrupted
        barged = await _barge_in(client, question, interruption)
        barged = barged or await _barge_in(client, question, interruption)  # the reply may end too soon once
        assert barged is not None, "the reply finished twice before the interruption was heard"
        response_id = barged.response_id
        cleared = await client.wait_received(
            "output_audio_buffer.cleared", within=5, where=lambda e: e["response_id"] == response_id
        )
        # The interruption's own turn: heard, not lost, and answered.
        heard = await client.wait_for(
            "conversation.item.input_audio_transcription.completed", within=TURN_S, since=cleared.index
        )
        await client.wait_turn(within=TURN_S, since=cleared.index)
        reset = await client.update_session({"max_output_tokens": "inf"})
        assert reset["session"]["max_output_tokens"] == LlmSettings().max_tokens  # the server's own cap again

    # The cancel came promptly once the interrupting speech began to arrive (VAD onset + 250 ms minimum).
    assert cleared.at - barged.sent_at < 3.0
    speech = client.find("input_audio_buffer.speech_started", since=barged.first_audio.index)
    assert speech is not None and abs(speech.at - cleared.at) < 0.5
    done = client.find("response.done", where=lambda e: e["response"]["id"] == response_id)
    assert done is not None and done.event["response"]["status"] == "cancelled" and done.index > cleared.index
    # Its audio was streaming before the cancel, and none of it came after.
    deltas = [r for r in client.received if r.event.get("response_id") == response_id and r.event["type"] == AUDIO]
    assert deltas and all(r.index < cleared.index for r in deltas)
    assert wer(interruption_ref, heard["transcript"]) < 0.3
    # Both utterances on one timeline: each stops after it starts, the second after the first.
    started, stopped = (
        client.of_type("input_audio_buffer.speech_started"),
        client.of_type("input_audio_buffer.speech_stopped"),
    )
    assert len(started) == len(stopped) >= 2
    for start, stop in zip(started, stopped, strict=True):
        assert start["item_id"] == stop["item_id"] and start["audio_start_ms"] < stop["audio_end_ms"]
    assert started[-1]["audio_start_ms"] > stopped[0]["audio_end_ms"]
    assert barged.truncated["audio_end_ms"] == 400 and barged.truncated["item_id"] == item_of(client, response_id)
    assert errors(client) == []


# -- (4) manual turns -------------------------------------------------------------------------


async def test_manual_turns_reply_only_when_asked(server: ServerProcess, clip: Clip) -> None:
    pcm, reference = clip(FORWARD)
    async with await RealtimeClient.connect(server.ws_url) as client:
        updated = await client.update_session({"audio": {"input": {"turn_detection": None}}})
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await client.stream(pcm, realtime=False)
        await client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait_for("input_audio_buffer.committed", within=5)
        heard = await client.wait_for("conversation.item.input_audio_transcription.completed", within=TURN_S)
        await asyncio.sleep(1.5)
        assert client.of_type("response.created") == []
        assert client.of_type("input_audio_buffer.speech_started") == []  # no server VAD
        since = client.mark
        await client.send({"type": "response.create", "event_id": "ask"})
        done, trace = await client.wait_turn(within=TURN_S, since=since)
        await client.send({"type": "response.cancel", "event_id": "cancel-nothing"})
        error = await client.wait_error("response_cancel_not_active")

    assert heard["item_id"] == committed["item_id"]
    assert wer(reference, heard["transcript"]) < 0.3
    assert len(client.reply_audio(done["response"]["id"])) / 24000 > 0.5
    assert trace["trace"]["turn_id"] == 1
    assert error["event_id"] == "cancel-nothing" and "no response" in error["message"]


# -- (5) input rates ----------------------------------------------------------------------------


async def _manual_transcript(client: RealtimeClient, pcm: PCM16, rate: int) -> str:
    since = client.mark
    await client.stream(pcm, rate=rate, realtime=False)
    await client.send({"type": "input_audio_buffer.commit"})
    event = await client.wait_for("conversation.item.input_audio_transcription.completed", within=TURN_S, since=since)
    return str(event["transcript"])


@pytest.mark.parametrize("rate", [16000, 48000])
async def test_input_and_output_at_other_rates(server: ServerProcess, clip: Clip, rate: int) -> None:
    pcm, reference = clip(ILL, rate)
    fmt = {"type": "audio/pcm", "rate": rate}
    async with await RealtimeClient.connect(server.ws_url) as client:
        updated = await client.update_session(
            {"audio": {"input": {"format": fmt, "turn_detection": None}, "output": {"format": fmt}}}
        )
        assert updated["session"]["audio"]["input"]["format"]["rate"] == rate
        assert updated["session"]["audio"]["output"]["format"]["rate"] == rate
        assert wer(reference, await _manual_transcript(client, pcm, rate)) < 0.3
        since = client.mark
        await client.send({"type": "response.create"})
        done, _ = await client.wait_turn(within=TURN_S, since=since)
        reply = client.reply_audio(done["response"]["id"])
        said = client.of_type("response.output_audio_transcript.done")[-1]["transcript"]
        # Play the reply back into the server at the same rate: at the wrong rate it would be unintelligible.
        heard_back = await _manual_transcript(client, reply, rate)
    assert len(reply) / rate > 0.5
    # Characters, not words: a short reply with an invented name ("new-santedo" → "new Santido") would fail on
    # words while clearly heard, and one made mostly of such a name comes back at ~0.3 even so ("The
    # old-santedo face." → "the olds and t-to face."); speech played at the wrong rate comes back as other
    # words altogether (two eval clips at half, a third and twice their pace: 0.76-0.9).
    assert cer(said, heard_back) < 0.5, (said, heard_back)
    assert errors(client) == []


async def test_an_unsupported_rate_is_refused_and_the_session_keeps_its_own(server: ServerProcess) -> None:
    async with await RealtimeClient.connect(server.ws_url) as client:
        since = client.mark
        await client.send(
            {
                "type": "session.update",
                "event_id": "e1",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}},
            }
        )
        error = await client.wait_error("unsupported_format", since=since)
        updated = await client.update_session({})
    assert error["event_id"] == "e1" and "44100" in error["message"] and "24000" in error["message"]
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 24000
    assert client.of_type("session.updated") == [updated]


# -- (6) protocol conformance ----------------------------------------------------------------

APPEND = "input_audio_buffer.append"
TRUNCATE = "conversation.item.truncate"
SILENCE_MS = {"session": {"audio": {"input": {"turn_detection": {"silence_duration_ms": "long"}}}}}
# (name, message, the error code it must get). Dict messages are sent as JSON with an event_id.
BAD_MESSAGES: list[tuple[str, str | bytes | Event, str]] = [
    ("not json", "{not json", "invalid_json"),
    ("not an object", "[1, 2]", "invalid_event"),
    ("no type", '{"event_id": "x"}', "invalid_event"),
    ("unknown type", {"type": "conversation.item.create"}, "unknown_event"),
    ("append without audio", {"type": APPEND}, "invalid_event"),
    ("append with a number", {"type": APPEND, "audio": 5}, "invalid_event"),
    ("audio not base64", {"type": APPEND, "audio": "%%% not base64 %%%"}, "invalid_audio"),
    ("odd byte count", {"type": APPEND, "audio": base64.b64encode(b"abc").decode()}, "invalid_audio"),
    ("session of wrong type", {"type": "session.update", "session": {"type": "transcription"}}, "invalid_event"),
    ("bad silence duration", {"type": "session.update", **SILENCE_MS}, "invalid_event"),
    ("no reply allowed", {"type": "session.update", "session": {"max_output_tokens": 0}}, "invalid_event"),
    ("commit under server VAD", {"type": "input_audio_buffer.commit"}, "invalid_event"),
    ("truncate without item", {"type": TRUNCATE, "content_index": 0, "audio_end_ms": 10}, "invalid_event"),
    ("truncate with text ms", {"type": TRUNCATE, "item_id": "i", "audio_end_ms": "10"}, "invalid_event"),
    ("truncate unknown item", {"type": TRUNCATE, "item_id": "item_nope", "audio_end_ms": 10}, "item_not_found"),
    ("cancel with none active", {"type": "response.cancel"}, "response_cancel_not_active"),
    ("binary before opting in", b"\x00\x00" * 480, "binary_not_enabled"),
]


async def test_malformed_events_get_a_clear_error_and_the_session_goes_on(server: ServerProcess, clip: Clip) -> None:
    pcm, reference = clip(FORWARD)
    async with await RealtimeClient.connect(server.ws_url) as client:
        await client.wait_for("session.created", within=10)
        refused: dict[str, Event] = {}
        for name, message, code in BAD_MESSAGES:
            since = client.mark
            if isinstance(message, dict):
                await client.send({**message, "event_id": f"bad-{name}"})
            else:
                await client.send_raw(message)
            refused[name] = await client.wait_error(code, since=since)
        # Still listening: a real utterance is transcribed and answered.
        since = client.mark
        await say(client, pcm)
        await client.wait_turn(within=TURN_S, since=since)

    for name, message, code in BAD_MESSAGES:
        error = refused[name]
        assert error["code"] == code and len(error["message"]) > 15, (name, error)
        assert error["event_id"] == (f"bad-{name}" if isinstance(message, dict) else None), name
    assert "audio" in refused["append without audio"]["message"]
    assert "turn_detection" in refused["commit under server VAD"]["message"]
    assert "binary_audio" in refused["binary before opting in"]["message"]
    transcript = client.of_type("conversation.item.input_audio_transcription.completed")[-1]["transcript"]
    assert wer(reference, transcript) < 0.3
    assert len(errors(client)) == len(BAD_MESSAGES)


async def test_every_client_event_of_the_subset_is_accepted(server: ServerProcess, clip: Clip) -> None:
    pcm, _ = clip(CARDS)
    async with await RealtimeClient.connect(server.ws_url) as client:
        await client.update_session({"instructions": STORYTELLER, "audio": {"input": {"turn_detection": None}}})
        await client.send({"type": "input_audio_buffer.append", "event_id": "e-append", "audio": ""})
        await client.append(silence(0.2))
        await client.send({"type": "input_audio_buffer.clear", "event_id": "e-clear"})
        await client.wait_for("input_audio_buffer.cleared", within=5)
        await client.stream(pcm, realtime=False)
        await client.send({"type": "input_audio_buffer.commit", "event_id": "e-commit"})
        await client.wait_for("input_audio_buffer.committed", within=5)
        await client.send(
            {"type": "response.create", "event_id": "e-create", "response": {"instructions": "Be brief."}}
        )
        created = await client.wait_for("response.created", within=TURN_S)
        response_id = created["response"]["id"]
        await client.send({"type": "voxloop.playback.started", "event_id": "e-playback", "response_id": response_id})
        await client.send({"type": "response.cancel", "event_id": "e-cancel"})
        cancelled = await client.wait_for("response.done", within=TURN_S)
        item_id = cancelled["response"]["output"][0]["id"]
        await client.send(
            {
                "type": "conversation.item.truncate",
                "event_id": "e-trunc",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 0,
            }
        )
        await client.wait_for("conversation.item.truncated", within=5)
        # A fresh reply is still possible after the cancel.
        since = client.mark
        await client.send({"type": "response.create", "event_id": "e-create-2"})
        done, _ = await client.wait_turn(within=TURN_S, since=since)

    assert cancelled["response"]["id"] == response_id and cancelled["response"]["status"] == "cancelled"
    assert done["response"]["status"] == "completed" and done["response"]["id"] != response_id
    assert errors(client) == [], errors(client)


# -- (7) binary fast path -----------------------------------------------------------------------


async def test_binary_audio_round_trip(server: ServerProcess, clip: Clip) -> None:
    pcm, reference = clip(AMIABLE)
    async with await RealtimeClient.connect(server.ws_url) as client:
        updated = await client.enable_binary()
        assert updated["session"]["voxloop"]["binary_audio"] is True
        await say(client, pcm)  # as binary messages now
        done, _ = await client.wait_turn(within=TURN_S)

    transcript = client.of_type("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(reference, transcript) < 0.3
    assert client.of_type("response.output_audio.delta") == []
    binary = client.of_type(BINARY_AUDIO)
    assert binary and all(e["response_id"] == done["response"]["id"] for e in binary)
    reply = client.reply_audio(done["response"]["id"])
    assert len(reply) / 24000 > 0.5 and int(np.abs(reply.astype(np.int32)).max()) > 1000
    assert errors(client) == []


# -- (8) the `voxloop talk` command ---------------------------------------------------------


def _talk(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "voxloop", "talk", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ}, check=False)


def test_talk_streams_a_recording_and_saves_the_reply(server: ServerProcess, eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    result = _talk("--wav", str(eval_dir / "audio" / f"{FORWARD}.wav"), "--url", server.ws_url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    heard = next(line for line in lines if "input_audio_transcription.completed" in line)
    assert wer("go forward ten meters", heard.split("you:", 1)[1]) < 0.3
    assert any("response.done" in line and "completed" in line for line in lines)
    assert sum("(reply audio)" in line for line in lines) == 1  # deltas summarised, not one line each
    assert not any("response.output_audio.delta" in line for line in lines)
    assert "voice-to-voice" in result.stdout and "reply audio:" in result.stdout
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        assert wav.getnframes() / 24000 > 0.5


@pytest.mark.parametrize("flags", [["--binary", "--manual", "--rate", "16000"]])
def test_talk_binary_manual(server: ServerProcess, eval_dir: Path, tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "reply.wav"
    result = _talk("--wav", str(eval_dir / "audio" / f"{CARDS}.wav"), "--url", server.ws_url, "--out", str(out), *flags)
    assert result.returncode == 0, result.stderr
    assert "turns manual" in result.stdout and "speech_started" not in result.stdout
    with wave.open(str(out), "rb") as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() / 16000 > 0.5


def test_talk_says_clearly_when_the_server_is_unreachable(server: ServerProcess, eval_dir: Path) -> None:
    wav = str(eval_dir / "audio" / f"{FORWARD}.wav")
    nobody = _talk("--wav", wav, "--url", f"ws://127.0.0.1:{free_port()}/v1/realtime")
    assert nobody.returncode == 2
    assert "cannot connect" in nobody.stderr and "voxloop serve" in nobody.stderr and "Traceback" not in nobody.stderr
    wrong_path = _talk("--wav", wav, "--url", server.url.replace("http", "ws") + "/v1/nowhere")
    assert wrong_path.returncode == 2 and "/v1/realtime" in wrong_path.stderr, wrong_path.stderr
    missing = _talk("--wav", "/nonexistent.wav", "--url", server.ws_url)
    assert missing.returncode == 2 and "cannot read audio from /nonexistent.wav" in missing.stderr


async def test_client_connect_error_names_the_url() -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with pytest.raises(ClientError, match=f"cannot connect to {re.escape(url)}"):
        await RealtimeClient.connect(url, within=2)
