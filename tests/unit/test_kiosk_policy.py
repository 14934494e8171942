"""Kiosk policy: when a woken session sleeps again and when it forgets, on a virtual clock."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voxloop.pipeline.clock import LoopClock
from voxloop.pipeline.config import KioskSettings
from voxloop.pipeline.kiosk import NS, Due, KioskController, KioskPolicy, chime, is_goodbye
from voxloop.pipeline.session import Session, State

S = NS  # one second in ns


def policy() -> KioskPolicy:
    return KioskPolicy(awake_s=8.0, follow_up_s=5.0, idle_reset_s=60.0)


def test_a_wake_word_with_no_speech_after_it_sleeps_after_awake_s() -> None:
    kiosk = policy()
    assert kiosk.asleep and kiosk.next_deadline() is None
    assert kiosk.wake(10 * S)
    assert kiosk.due(18 * S - 1) == Due()
    assert kiosk.due(18 * S) == Due(sleep=True)
    assert kiosk.asleep and kiosk.due(100 * S) == Due()  # reported once


def test_a_turn_holds_the_session_awake_then_the_follow_up_window_runs() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(2 * S, in_turn=True)
    assert kiosk.next_deadline() is None
    assert kiosk.due(60 * S) == Due()  # a long reply: awake and nothing forgotten while it runs
    kiosk.activity(61 * S, in_turn=False)
    assert kiosk.due(66 * S - 1) == Due()
    assert kiosk.due(66 * S) == Due(sleep=True)


def test_speaking_again_in_the_follow_up_window_needs_no_wake_word() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(1 * S, in_turn=True)
    kiosk.activity(4 * S, in_turn=False)
    kiosk.activity(8 * S, in_turn=True)  # within 5 s: a follow-up question
    assert kiosk.due(20 * S) == Due() and not kiosk.asleep
    kiosk.activity(20 * S, in_turn=False)
    assert kiosk.due(25 * S).sleep


def test_a_goodbye_sleeps_as_soon_as_its_reply_is_done() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(1 * S, in_turn=True)
    kiosk.activity(4 * S, in_turn=False, goodbye=True)
    assert kiosk.due(4 * S) == Due(sleep=True)


def test_idle_reset_forgets_the_conversation_once_after_the_last_turn() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(1 * S, in_turn=True)
    kiosk.activity(3 * S, in_turn=False)
    assert kiosk.due(8 * S) == Due(sleep=True)
    assert kiosk.next_deadline() == 63 * S
    assert kiosk.due(63 * S) == Due(forget=True)
    assert kiosk.next_deadline() is None and kiosk.due(200 * S) == Due()


def test_a_new_turn_before_the_idle_reset_keeps_the_conversation() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(1 * S, in_turn=True)
    kiosk.activity(3 * S, in_turn=False)
    kiosk.due(8 * S)
    kiosk.wake(30 * S)  # the same visitor again
    kiosk.activity(31 * S, in_turn=True)
    assert kiosk.due(63 * S) == Due()
    kiosk.activity(64 * S, in_turn=False)
    assert kiosk.due(124 * S).forget


def test_a_wake_word_while_awake_only_extends_the_window_and_activity_asleep_is_ignored() -> None:
    kiosk = policy()
    kiosk.activity(0, in_turn=True)  # asleep: the VAD hears nothing, but be safe
    assert kiosk.asleep and kiosk.next_deadline() is None
    kiosk.wake(0)
    assert not kiosk.wake(5 * S)
    assert kiosk.next_deadline() == 13 * S


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Goodbye!", True),
        ("Okay, bye bye.", True),
        ("That's all, thank you. That's all", True),
        ("Say goodbye to the goodbyes and tell me more", False),
        ("what time is it", False),
        ("", False),
    ],
)
def test_goodbye_phrases_end_the_utterance(text: str, expected: bool) -> None:
    assert is_goodbye(text, KioskSettings().goodbye_phrases) is expected


def test_the_chime_is_two_soft_tones_that_start_and_end_quietly() -> None:
    pcm = chime(24000)
    assert chime(24000) is pcm and not pcm.flags.writeable  # cached, shared, read-only
    assert 0.3 < len(pcm) / 24000 < 0.5
    assert 0.25 * 32767 < np.max(np.abs(pcm)) <= 0.31 * 32767  # audible, well below full scale
    assert abs(int(pcm[0])) < 500 and abs(int(pcm[-1])) < 50
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / 24000)
    top = {round(float(f), -1) for f in freqs[np.argsort(spectrum)[-6:]]}
    assert any(abs(f - 660) <= 10 for f in top) and any(abs(f - 880) <= 10 for f in top), top
    assert len(chime(16000)) == round(0.35 * 16000)


# --- the controller on a live session, on the loop's (virtual) clock ----------------------------


@pytest.mark.looptime
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_the_timer_sleeps_and_forgets_with_no_audio_arriving() -> None:
    session = Session(clock=LoopClock())
    sleeps: list[float] = []
    settings = KioskSettings(follow_up_s=5.0, idle_reset_s=30.0)
    loop = asyncio.get_running_loop()

    def fall_asleep() -> None:
        sleeps.append(loop.time())
        session.state = State.ASLEEP

    kiosk = KioskController(session, settings, awake_s=8.0, on_sleep=fall_asleep)
    await kiosk.start()
    try:
        t0 = loop.time()
        session.state = State.ASLEEP
        assert kiosk.woke()
        session.state = State.LISTENING
        await asyncio.sleep(1)
        await session.user_started_speaking()
        kiosk.observe()  # the wake stage does this on every audio frame
        session.user_stopped_speaking(session.now_ns())  # → thinking
        session.user_said("what time is it")
        await asyncio.sleep(20)  # a slow reply: the session stays awake meanwhile
        assert sleeps == []
        session.reply_finished("It is noon.")  # → listening: the follow-up window opens
        await asyncio.sleep(10)
        assert [round(t - t0, 3) for t in sleeps] == [26.0]
        assert len(session.history) == 2
        await asyncio.sleep(30)
        assert session.history == []  # idle reset, 30 s after the reply
    finally:
        await kiosk.close()


@pytest.mark.looptime
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_a_spoken_goodbye_sleeps_right_after_its_reply() -> None:
    session = Session(clock=LoopClock())
    sleeps: list[float] = []
    kiosk = KioskController(
        session, KioskSettings(follow_up_s=5.0), awake_s=8.0, on_sleep=lambda: sleeps.append(session.now_ns() / NS)
    )
    await kiosk.start()
    try:
        kiosk.woke()
        await session.user_started_speaking()
        kiosk.observe()
        session.user_stopped_speaking(session.now_ns())
        session.user_said("thanks, goodbye")
        await asyncio.sleep(3)
        start = session.now_ns() / NS
        session.reply_finished("Goodbye, have a nice day.")
        await asyncio.sleep(0.1)
        assert sleeps == [pytest.approx(start)]
    finally:
        await kiosk.close()


def test_the_follow_up_window_opens_when_the_reply_has_played_not_when_it_was_sent() -> None:
    kiosk = policy()
    kiosk.wake(0)
    kiosk.activity(1 * S, in_turn=True)
    kiosk.activity(4 * S, in_turn=False)  # the last audio went out at 4 s ...
    kiosk.played_until(10 * S)  # ... and plays until 10 s
    assert kiosk.due(14 * S) == Due()
    assert kiosk.due(15 * S) == Due(sleep=True)
    kiosk.wake(20 * S)
    kiosk.activity(21 * S, in_turn=True)
    kiosk.activity(22 * S, in_turn=False, goodbye=True)
    kiosk.played_until(25 * S)  # a goodbye sleeps once its reply is heard out
    assert kiosk.due(24 * S) == Due() and kiosk.due(25 * S).sleep
