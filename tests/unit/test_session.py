from __future__ import annotations

import numpy as np
import pytest

from voxloop.pipeline.frames import AudioOutput, ReplyDone, Transcript
from voxloop.pipeline.session import Session, State


class StepClock:
    def __init__(self) -> None:
        self.t = 1_000

    def now_ns(self) -> int:
        self.t += 1_000
        return self.t


def test_make_stamps_session_turn_epoch_and_time() -> None:
    session = Session(session_id="s1", clock=StepClock())
    session.turn_id, session.epoch = 3, 2
    frame = session.make(Transcript, text="hi")
    assert (frame.session_id, frame.turn_id, frame.epoch, frame.text) == ("s1", 3, 2, "hi")
    assert frame.t_ns == 2_000


def test_marks_are_set_once_and_unknown_marks_rejected() -> None:
    session = Session(clock=StepClock())
    session.mark("speech_end", 10)
    session.mark("speech_end", 99)
    session.mark("first_audio_sent", 510_000_010)
    assert session.trace.marks["speech_end"] == 10
    assert session.trace.voice_to_voice_ms == pytest.approx(510.0)
    with pytest.raises(ValueError, match="unknown trace mark"):
        session.mark("llm_last_token")


def _audio(session: Session, index: int, text: str) -> AudioOutput:
    return session.make(AudioOutput, pcm=np.zeros(160, np.int16), chunk_index=index, chunk_text=text)


def test_output_bookkeeping_commits_the_whole_reply() -> None:
    session = Session()
    session.user_said("what time is it")
    assert session.state is State.THINKING
    session.output_sent(_audio(session, 0, "It is noon."))
    assert session.state is State.SPEAKING
    session.output_sent(session.make(ReplyDone, text="It is noon. Enjoy lunch."))
    assert [m.as_dict() for m in session.history] == [
        {"role": "user", "content": "what time is it"},
        {"role": "assistant", "content": "It is noon. Enjoy lunch."},
    ]
    assert session.state is State.LISTENING
    assert "first_audio_sent" in session.finished_traces[-1].marks


async def test_interrupt_keeps_only_the_chunks_that_were_heard() -> None:
    session = Session()
    session.user_said("tell me a story")
    for index, text in enumerate(["Once upon a time,", "there was a fox."]):
        session.output_sent(_audio(session, index, text))
        session.output_sent(_audio(session, index, text))  # a second frame of a chunk adds nothing
    await session.user_started_speaking()
    assert session.epoch == 1 and session.interrupts == 1
    assert session.history[-1].content == "Once upon a time, there was a fox."
    assert session.turn_id == 1


async def test_words_cut_off_before_any_reply_are_joined_to_the_next_utterance() -> None:
    session = Session()
    session.user_said("I would like")
    await session.user_started_speaking()  # the user went on before the assistant made a sound
    assert session.history == []
    assert session.user_said("a pizza please") == "I would like a pizza please"
    assert [m.content for m in session.history] == ["I would like a pizza please"]


def test_stale_output_is_not_counted_as_heard() -> None:
    session = Session()
    session.user_said("hello")
    stale = _audio(session, 0, "Hi there.")
    session.epoch += 1
    session.output_sent(stale)
    assert "first_audio_sent" not in session.trace.marks


def test_truncate_reply_to_what_the_client_played() -> None:
    session = Session()
    session.user_said("hello")
    session.reply_finished("Hi there. How can I help you today?")
    session.truncate_reply("Hi there.")
    assert session.history[-1].content == "Hi there."
    session.truncate_reply("")
    assert session.history[-1].role == "user"


async def test_speech_after_the_endpoint_is_a_barge_in_even_before_the_transcript() -> None:
    session = Session()
    await session.user_started_speaking()
    session.user_stopped_speaking(speech_end_ns=1)
    assert session.state is State.THINKING  # the utterance is being answered
    await session.user_started_speaking()  # the user goes on while it is being transcribed
    assert session.interrupts == 1
    assert session.epoch == 1


async def test_utterances_a_barge_in_cut_off_before_their_transcript_come_before_the_next() -> None:
    session = Session()
    first, second, third = (np.full(4, value, np.int16) for value in (1, 2, 3))
    await session.user_started_speaking()
    session.user_stopped_speaking(1, first)
    await session.user_started_speaking()  # the user goes on before "first" was transcribed
    session.user_stopped_speaking(2, second)
    await session.user_started_speaking()  # and again
    assert session.with_cut_off_words(third).tolist() == [1] * 4 + [2] * 4 + [3] * 4
    session.user_said("one two three")  # their words are in this transcript: nothing is kept
    assert session.with_cut_off_words(third) is third

    session.user_stopped_speaking(3, first)
    session.user_said("transcribed")  # transcribed before the user went on: its words are in history
    await session.user_started_speaking()
    assert session.with_cut_off_words(third) is third
    session.user_stopped_speaking(4, second)
    session.utterance_dropped()  # no words in it
    await session.user_started_speaking()
    assert session.with_cut_off_words(third) is third


async def test_the_words_carried_are_bounded_to_the_newest_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("voxloop.pipeline.session.MAX_CARRIED_SAMPLES", 6)
    session = Session()
    first, second, third = (np.full(4, value, np.int16) for value in (1, 2, 3))
    await session.user_started_speaking()
    session.user_stopped_speaking(1, first)
    await session.user_started_speaking()
    session.user_stopped_speaking(2, second)
    await session.user_started_speaking()
    assert session.with_cut_off_words(third).tolist() == [1] * 2 + [2] * 4 + [3] * 4


def test_an_utterance_without_words_returns_to_listening() -> None:
    session = Session()
    session.user_stopped_speaking(speech_end_ns=1)
    session.utterance_dropped()
    assert session.state is State.LISTENING


async def test_an_empty_reply_does_not_make_the_next_interrupt_eat_an_old_question() -> None:
    session = Session()
    session.user_said("first question")
    session.reply_finished("")  # the model said nothing
    session.user_said("second question")
    await session.user_started_speaking()  # barge-in before any sound
    assert [m.content for m in session.history] == ["first question"]
    assert session.user_said("more") == "second question more"
