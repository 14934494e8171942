"""An existing OpenAI Realtime client works against voxloop by changing its base URL:
the official `openai` SDK speaks to a real `voxloop serve` with a real recording."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, Final

import jiwer
import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.integration.servers import ServerProcess
from voxloop.pipeline.audio import decode_audio
from voxloop.pipeline.tasks import cancel_and_wait

pytestmark = pytest.mark.integration

RATE: Final = 24000
CLIP = "audio/librivox_ss01_0930.wav"
REFERENCE = "he might even have been made amiable himself"


def words(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


async def _speak(connection: Any, pcm: np.ndarray) -> None:
    """Append 20 ms pieces at real-time pace through the SDK, then silence to end the turn."""
    audio = np.concatenate([np.zeros(RATE // 4, np.int16), pcm, np.zeros(RATE * 3 // 2, np.int16)])
    step = RATE // 50
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, offset in enumerate(range(0, len(audio), step)):
        await asyncio.sleep(max(0.0, start + index * 0.02 - loop.time()))
        piece = audio[offset : offset + step].astype("<i2").tobytes()
        await connection.input_audio_buffer.append(audio=base64.b64encode(piece).decode("ascii"))


async def _events_until_trace(connection: Any) -> list[Any]:
    events: list[Any] = []
    async for event in connection:
        events.append(event)
        if event.type == "voxloop.trace":
            return events
    raise AssertionError(f"the connection closed after {[e.type for e in events]}")


async def test_the_openai_sdk_talks_to_voxloop(server: ServerProcess, eval_dir: Path) -> None:
    pcm = decode_audio(eval_dir / CLIP, rate=RATE)
    base_url = server.ws_url.removesuffix("/realtime")  # ws://127.0.0.1:PORT/v1
    client = AsyncOpenAI(api_key="not-needed", websocket_base_url=base_url)
    async with client.realtime.connect(model="voxloop") as connection:
        await connection.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a helpful assistant. Answer in one short sentence.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": RATE},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": RATE}},
                },
            }
        )
        speaker = asyncio.create_task(_speak(connection, pcm))
        try:
            events = await asyncio.wait_for(_events_until_trace(connection), timeout=60)
        finally:
            await cancel_and_wait(speaker)
        await client.close()

    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.audio.input.format.rate == RATE
    for kind in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "response.created"):
        assert kind in kinds
    transcript = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    assert jiwer.wer(REFERENCE, words(transcript.transcript)) < 0.3
    deltas = [e for e in events if e.type == "response.output_audio.delta"]
    audio = b"".join(base64.b64decode(e.delta) for e in deltas)
    assert len(audio) / 2 / RATE > 0.5
    done = next(e for e in events if e.type == "response.done")
    assert done.response.status == "completed"
    assert {e.response_id for e in deltas} == {done.response.id}
    spoken = next(e for e in events if e.type == "response.output_audio_transcript.done").transcript
    assert spoken.strip()  # SmolLM2 is weak: any words will do
