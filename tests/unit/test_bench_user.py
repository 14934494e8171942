"""The simulated user's timeline: a lead-in of silence shifts its speech, frame for frame."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from voxloop.bench.conversation import RATE, Conversation, Segment
from voxloop.bench.user import TAIL_S, SimulatedUser
from voxloop.client import RealtimeClient


class Microphone:
    """Stands in for the client: keeps every appended frame, receives nothing."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray[Any, Any]] = []
        self.received: list[Any] = []

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
