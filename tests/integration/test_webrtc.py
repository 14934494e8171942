"""The WebRTC transport end to end: a Python aiortc peer talks to the real server, real models, real recordings.

The peer (voxloop.rtc_client) sends a recording as an Opus microphone track at real-time pace and
records the server's reply track; the events come over the `oai-events` data channel.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import re
import time
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import ServerProcess
from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.frames import PCM16
from voxloop.rtc_client import RTC_AUDIO, RtcClient

pytestmark = pytest.mark.integration

TURN_S = 90.0  # a spoken turn takes ~2-4 s here; generous for a busy 2-core machine
BARGE_IN_BOUND_S = 1.5  # speech_started (as the client got it) → the reply track silent
LONG_REPLY = "Answer every question with three long sentences about the history of ships."


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def clip(eval_dir: Path, manifest: list[dict[str, str]], clip_id: str) -> tuple[PCM16, str]:
    row = next(r for r in manifest if r["id"] == clip_id)
    pcm, rate = read_wav(eval_dir / row["file"])
    assert rate == 16000, rate
    return pcm, row["transcript_norm"]


def silence(seconds: float) -> PCM16:
    return np.zeros(int(16000 * seconds), np.int16)


@asynccontextmanager
async def peer(server: ServerProcess, **options: float) -> AsyncIterator[RtcClient]:
    client = await RtcClient.connect_rtc(server.url, **options)  # type: ignore[arg-type]
    try:
        await client.wait_for("session.created", within=10)
        yield client
    finally:
        await client.close()


async def keep_talking(client: RtcClient, pcm: PCM16) -> None:
    """The recording, then silence for as long as the caller lets it run (a microphone never stops)."""
    await client.stream(pcm, rate=16000)
    while True:
        await client.stream(silence(0.2), rate=16000)


async def transcribe(server: ServerProcess, pcm: PCM16, rate: int) -> str:
    """What the server's own Whisper hears in `pcm` (POST /api/transcribe)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2").tobytes())
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{server.url}/api/transcribe", files={"file": ("reply.wav", buffer.getvalue())})
    response.raise_for_status()
    return str(response.json()["text"])


async def test_turn_over_webrtc_speaks_the_reply_on_the_track(
    server: ServerProcess, eval_dir: Path, manifest: list[dict[str, str]]
) -> None:
    pcm, reference = clip(eval_dir, manifest, "psphinx_goforward")
    async with peer(server) as client:
        talking = asyncio.create_task(keep_talking(client, pcm))
        try:
            done, trace = await client.wait_turn(within=TURN_S)
            rid = done["response"]["id"]
            await client.wait_for("output_audio_buffer.stopped", within=TURN_S, where=lambda e: e["response_id"] == rid)
        finally:
            talking.cancel()
        events = client.events
        reply = client.reply_audio(rid)

    heard = next(
        e["transcript"] for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    )
    assert difflib.SequenceMatcher(None, words(heard), words(reference)).ratio() >= 0.75, heard
    kinds = [e["type"] for e in events]
    assert "response.output_audio.delta" not in kinds, "over WebRTC reply audio travels on the track only"
    started = kinds.index("output_audio_buffer.started")
    assert kinds.index("response.created") < started < kinds.index("output_audio_buffer.stopped")
    # The reply track carried speech: transcribed back, it says what the response's transcript says.
    said = next(e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done")
    assert len(reply) > 0.5 * client.reply_rate, f"only {len(reply)} samples of reply audio arrived"
    spoken = await transcribe(server, reply, client.reply_rate)
    match = difflib.SequenceMatcher(None, words(spoken), words(said)).ratio()
    assert match >= 0.6, f"the track said {spoken!r}, the reply was {said!r}"
    # first_audio_sent is when the track handed out the first reply frame: after the TTS made it.
    marks = trace["trace"]["marks_ms"]
    assert marks["tts_first_audio"] <= marks["first_audio_sent"] < marks["tts_first_audio"] + 500, marks
    print(f"v2v {trace['trace']['voice_to_voice_ms']:.0f} ms; track said {spoken!r}; reply {said!r} ({match:.2f})")


async def test_barge_in_silences_the_track_at_once(
    server: ServerProcess, eval_dir: Path, manifest: list[dict[str, str]]
) -> None:
    first, _ = clip(eval_dir, manifest, "librivox_ss01_0930")
    second, _ = clip(eval_dir, manifest, "psphinx_goforward")
    async with peer(server) as client:
        await client.update_session({"instructions": LONG_REPLY})
        talking = asyncio.create_task(keep_talking(client, first))
        try:
            on_air = await client.wait_for("output_audio_buffer.started", within=TURN_S)
            rid = on_air["response_id"]
            await asyncio.sleep(0.4)  # let some of the reply play
            talking.cancel()
            since = client.mark
            talking = asyncio.create_task(keep_talking(client, second))  # talk over it
            speech = await client.wait_received("input_audio_buffer.speech_started", within=TURN_S, since=since)
            cleared = await client.wait_for(
                "output_audio_buffer.cleared", within=TURN_S, where=lambda e: e["response_id"] == rid
            )
            truncated = await client.wait_for("conversation.item.truncated", within=10, since=since)
            answered = await client.wait_received(
                "conversation.item.input_audio_transcription.completed", within=TURN_S, since=speech.index
            )
            await asyncio.sleep(0.3)  # frames in flight when the transcript came
        finally:
            talking.cancel()
        next_reply = client.find("response.created", since=speech.index)
        window_end = next_reply.at if next_reply else time.monotonic()
        loud = client.loud_frames(since=speech.at)
        loud = [at for at in loud if at < window_end]
        sent_before = sum(e["samples"] for e in client.events[: speech.index] if e["type"] == RTC_AUDIO)

    assert cleared and truncated["audio_end_ms"] > 0, truncated
    last_sound = max(loud, default=speech.at)
    silent_after_s = last_sound - speech.at
    assert silent_after_s < BARGE_IN_BOUND_S, f"reply audio went on {silent_after_s:.2f} s after speech_started"
    # The server truncated the item to about the audio that had left by then (48 kHz frames received).
    assert abs(truncated["audio_end_ms"] - sent_before / 48) < 1500, (truncated, sent_before / 48)
    assert "forward" in words(answered.event["transcript"]), answered.event
    print(f"barge-in: reply track silent {silent_after_s * 1000:.0f} ms after speech_started reached the client")


@pytest.mark.parametrize(
    ("echo_gain", "self_interrupts"),
    [
        pytest.param(0.0, False, id="no-echo"),  # the control: the same turn, nothing fed back
        pytest.param(0.5, True, id="uncancelled-echo"),  # -6 dB: a speaker next to a raw microphone
    ],
)
async def test_uncancelled_echo_interrupts_the_reply(
    server: ServerProcess, eval_dir: Path, manifest: list[dict[str, str]], echo_gain: float, self_interrupts: bool
) -> None:
    """The server does no echo cancellation: the reply, heard back by the microphone, is speech to the VAD.

    Echo removal is the client's job (a browser's AEC on audio played from the peer connection).
    """
    pcm, _ = clip(eval_dir, manifest, "psphinx_goforward")
    async with peer(server, echo_gain=echo_gain, echo_delay_ms=60) as client:
        talking = asyncio.create_task(keep_talking(client, pcm))
        try:
            on_air = await client.wait_received("output_audio_buffer.started", within=TURN_S)
            end = await _reply_end(client, on_air.event["response_id"])
            if end["type"] == "output_audio_buffer.cleared":  # the cut must come from the VAD hearing the echo
                await client.wait_for("input_audio_buffer.speech_started", within=10, since=on_air.index)
        finally:
            talking.cancel()
        heard_itself = client.find("input_audio_buffer.speech_started", since=on_air.index)
    interrupted = end["type"] == "output_audio_buffer.cleared"
    assert interrupted is self_interrupts, f"echo gain {echo_gain}: reply ended with {end['type']}"
    assert (heard_itself is not None) is self_interrupts, f"echo gain {echo_gain}: speech_started {heard_itself}"


async def _reply_end(client: RtcClient, rid: str) -> dict[str, object]:
    found = await client.wait_received(
        None,
        within=TURN_S,
        where=lambda e: (
            e.get("type") in ("output_audio_buffer.stopped", "output_audio_buffer.cleared")
            and e.get("response_id") == rid
        ),
    )
    return found.event


async def test_signalling_errors_say_what_to_send(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        wrong_type = await http.post("/v1/realtime/calls", content="v=0", headers={"Content-Type": "text/plain"})
        not_sdp = await http.post("/v1/realtime/calls", content="hello", headers={"Content-Type": "application/sdp"})
        unknown = await http.delete("/v1/realtime/calls/rtc_nope")
    assert wrong_type.status_code == 415 and "application/sdp" in wrong_type.json()["detail"], wrong_type.text
    assert not_sdp.status_code == 400 and "SDP offer" in not_sdp.json()["detail"], not_sdp.text
    assert unknown.status_code == 404 and "rtc_nope" in unknown.json()["detail"], unknown.text


async def test_hang_up_ends_the_session(server: ServerProcess) -> None:
    async with peer(server) as client:
        assert client.call_url is not None
        session_id = client.of_type("session.created")[0]["session"]["id"]
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.delete(client.call_url)).status_code == 204
        deadline = time.monotonic() + 15
        while f"session='{session_id}'" not in _closed_lines(server) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    assert f"session='{session_id}'" in _closed_lines(server), "the session outlived its peer connection"


def _closed_lines(server: ServerProcess) -> str:
    return "\n".join(line for line in server.log().splitlines() if "event='session_close'" in line)
