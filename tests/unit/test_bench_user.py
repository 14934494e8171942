"""The simulated user's timeline: a lead-in of silence shifts its speech, frame for frame."""

from __future__ import annotations

import base64
import time
from typing import Any, cast

import numpy as np
import pytest

from voxloop.bench.conversation import RATE, Conversation, Segment
from voxloop.bench.user import TAIL_S, SimulatedUser, reply_samples
from voxloop.client import RealtimeClient, Received


class Microphone:
    """Stands in for the client: keeps every appended frame, receives nothing."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray[Any, Any]] = []
        self.received: list[Received] = []

    def hear(self, event: dict[str, Any], at: float | None = None) -> None:
        self.received.append(Received(event, time.monotonic() if at is None else at, len(self.received)))

    async def append(self, pcm: np.ndarray[Any, Any]) -> None:
        self.frames.append(pcm)


def conversation() -> Conversation:
    pcm = np.concatenate([np.full(RATE // 10, 1000, np.int16), np.zeros(RATE // 10, np.int16)])
    segments = (Segment("speech", 0.0, 0.1, 0.08, "hi"), Segment("silence", 0.1, 0.2, 0.2, ""))
    return Conversation("tiny", pcm, segments)


async def test_a_lead_in_sends_silence_first_and_shifts_the_speech_timeline() -> None:
    mic = Microphone()
    run = await SimulatedUser(cast(RealtimeClient, mic), conversation(), polite=False, lead_in_s=0.2).talk()
    audio = np.concatenate(mic.frames)
    assert run.speech == [(0.2, 0.2 + 0.08, 0.2 + 0.1)]
    assert len(audio) == round((0.2 + 0.2 + TAIL_S) * RATE) and len(run.sent_at) == len(mic.frames)
    lead = round(0.2 * RATE)
    assert not audio[:lead].any() and (audio[lead : lead + RATE // 10] == 1000).all()
    assert run.wall_of(0.2) - run.wall_of(0.0) >= 0.19  # real-time pace: the lead-in takes its time


async def test_a_polite_user_waits_for_the_reply_to_be_made_and_played_then_for_the_next_one() -> None:
    mic = Microphone()
    user = SimulatedUser(cast(RealtimeClient, mic), conversation(), polite=True)
    one_second = base64.b64encode(bytes(2 * RATE)).decode()
    assert not user._busy()  # nobody has spoken yet
    mic.hear({"type": "input_audio_buffer.speech_stopped"})
    assert user._busy()  # the turn ended: its reply is awaited
    now = time.monotonic()
    mic.hear({"type": "response.output_audio.delta", "response_id": "r1", "delta": one_second}, at=now - 1.5)
    mic.hear({"type": "response.output_audio.delta", "response_id": "r1", "delta": one_second}, at=now - 0.2)
    mic.hear({"type": "response.done", "response": {"id": "r1"}})
    assert user._busy()  # the second second ran dry 0.5 s, so it plays until now + 0.8 s
    mic.hear({"type": "input_audio_buffer.speech_stopped"})
    mic.hear({"type": "response.output_audio.delta", "response_id": "r2", "delta": one_second}, at=now - 2.0)
    mic.hear({"type": "response.done", "response": {"id": "r2"}})
    assert not user._busy()  # the next turn's reply has played out
    mic.hear({"type": "input_audio_buffer.speech_stopped"})
    assert user._busy()


@pytest.mark.parametrize("size", [640, 641, 642, 2 * RATE])
def test_reply_samples_come_from_the_base64_length_without_decoding(size: int) -> None:
    delta = base64.b64encode(bytes(size)).decode()
    assert reply_samples({"type": "response.output_audio.delta", "delta": delta}) == size // 2
    assert reply_samples({"type": "voxloop.rtc_audio", "samples": 960, "rate": 48000}) == 320
    assert reply_samples({"type": "response.done"}) is None
