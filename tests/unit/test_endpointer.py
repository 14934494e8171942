"""The endpointer's turn logic on synthetic probability sequences (no model).

Every window's audio is filled with the window's index, so an utterance's audio shows exactly
which windows it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from voxloop.pipeline.config import VadSettings
from voxloop.pipeline.frames import PCM16
from voxloop.stages.vad import WINDOW, Endpointer, SpeechEnd, SpeechStart, VadEvent

MS_PER_WINDOW = WINDOW / 16  # 32 ms


def settings(**overrides: float) -> VadSettings:
    base: dict[str, float] = {"min_speech_ms": 96, "hangover_ms": 160, "preroll_ms": 64, "speculate_ms": 0}
    return VadSettings.model_validate(base | overrides)


def run(probs: Sequence[float], endpointer: Endpointer | None = None) -> list[tuple[int, VadEvent]]:
    """Feed one window per probability; returns (index of the window that caused it, event)."""
    endpointer = endpointer or Endpointer(settings())
    events: list[tuple[int, VadEvent]] = []
    start = endpointer.audio_end // WINDOW
    for index, prob in enumerate(probs, start=start):
        endpointer.append_audio(np.full(WINDOW, index, dtype=np.int16))
        events.extend((index, event) for event in endpointer.update(prob, (index + 1) * WINDOW))
    return events


def windows_in(audio: PCM16) -> list[int]:
    """The window indices some audio covers, checking it is whole windows in order."""
    assert len(audio) % WINDOW == 0
    ids = [int(v) for v in audio[::WINDOW]]
    assert np.array_equal(audio, np.repeat(np.array(ids, dtype=np.int16), WINDOW))
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    return ids


def test_hysteresis_needs_the_start_threshold_to_open_and_the_end_threshold_to_stay_open() -> None:
    between = 0.42  # above end_threshold 0.35, below start_threshold 0.5
    assert run([0.1, between, between, between, between, 0.1] + [0.1] * 10) == []

    events = run([0.1, 0.9] + [between] * 10 + [0.1] * 5)
    (started_at, start), (ended_at, end) = events
    assert isinstance(start, SpeechStart) and start.sample == 1 * WINDOW
    assert isinstance(end, SpeechEnd)
    assert end.speech_end == 12 * WINDOW  # the last `between` window still counted as voice
    assert started_at == 3  # three voiced windows = 96 ms = min_speech_ms
    assert ended_at == 16  # 5 silent windows = 160 ms = hangover_ms


def test_blips_shorter_than_min_speech_are_ignored() -> None:
    blip = [0.9, 0.9]  # 64 ms < 96 ms
    assert run(([0.0] * 3 + blip + [0.0] * 6) * 3) == []

    events = run([0.0] * 3 + [0.9] * 3 + [0.0] * 6)
    assert [type(e) for _, e in events] == [SpeechStart, SpeechEnd]
    assert events[0][1] == SpeechStart(3 * WINDOW)


@pytest.mark.parametrize("min_speech_ms", [0, 32, 250])
def test_speech_starts_once_min_speech_of_voice_is_heard(min_speech_ms: int) -> None:
    endpointer = Endpointer(settings(min_speech_ms=min_speech_ms))
    events = run([0.0, 0.0] + [0.9] * 20, endpointer)
    voiced_windows = max(1, -(-min_speech_ms // MS_PER_WINDOW))
    assert events == [(2 + voiced_windows - 1, SpeechStart(2 * WINDOW))]
    assert endpointer.in_speech


def test_pauses_shorter_than_the_hangover_do_not_end_the_utterance() -> None:
    pause = [0.0] * 4  # 128 ms < 160 ms
    events = run([0.9] * 5 + pause + [0.9] * 5 + pause + [0.9] * 5 + [0.0] * 5)
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechStart, SpeechEnd]
    end = events[1][1]
    assert isinstance(end, SpeechEnd)
    assert end.speech_start == 0 and end.speech_end == 23 * WINDOW


@pytest.mark.parametrize("hangover_ms", [32, 100, 160, 500])
def test_the_end_is_declared_after_the_hangover_and_speech_end_is_the_last_voiced_window(
    hangover_ms: int,
) -> None:
    events = run([0.0] * 2 + [0.9] * 6 + [0.2] * 30, Endpointer(settings(hangover_ms=hangover_ms)))
    ended_at, end = events[-1]
    assert isinstance(end, SpeechEnd) and not end.forced
    assert end.speech_end == 8 * WINDOW
    silent_windows = -(-hangover_ms * 16 // WINDOW)  # the first window end at or past the hangover
    assert ended_at == 7 + silent_windows
    assert windows_in(end.audio)[-1] == ended_at  # the audio runs to the decision


@pytest.mark.parametrize("preroll_ms", [0, 64, 300])
def test_the_utterance_keeps_preroll_audio_from_before_the_start(preroll_ms: int) -> None:
    events = run([0.0] * 20 + [0.9] * 6 + [0.0] * 6, Endpointer(settings(preroll_ms=preroll_ms)))
    end = events[-1][1]
    assert isinstance(end, SpeechEnd)
    assert end.audio_start == 20 * WINDOW - preroll_ms * 16
    assert len(end.audio) == 31 * WINDOW - end.audio_start  # to the decision, at window 30
    assert end.audio[0] == (end.audio_start // WINDOW) and end.audio[-1] == 30


def test_preroll_never_reaches_before_the_stream_or_the_previous_utterance() -> None:
    endpointer = Endpointer(settings(preroll_ms=1000))
    first = run([0.9] * 5 + [0.0] * 5, endpointer)[-1][1]
    second = run([0.0] * 2 + [0.9] * 5 + [0.0] * 5, endpointer)[-1][1]
    assert isinstance(first, SpeechEnd) and isinstance(second, SpeechEnd)
    assert first.audio_start == 0
    assert windows_in(first.audio) == list(range(0, 10))
    assert second.audio_start == 10 * WINDOW  # not 1 s back: that audio belongs to the first turn
    assert windows_in(second.audio) == list(range(10, 22))


def test_max_utterance_forces_an_end_and_the_next_utterance_continues_seamlessly() -> None:
    endpointer = Endpointer(settings(max_utterance_s=2.0, preroll_ms=300))
    events = run([0.9] * 150 + [0.0] * 10, endpointer)
    ends = [e for _, e in events if isinstance(e, SpeechEnd)]
    starts = [e for _, e in events if isinstance(e, SpeechStart)]
    assert len(starts) == len(ends) == 3
    assert [e.forced for e in ends] == [True, True, False]
    for end in ends:
        assert end.speech_end - end.speech_start <= 2 * 16000 + WINDOW
    audio = np.concatenate([e.audio for e in ends])
    assert windows_in(audio) == list(range(0, 155))  # every window exactly once
    assert ends[0].speech_end == ends[0].audio_start + len(ends[0].audio)  # cut while still speaking


def test_finish_ends_speech_in_progress_with_all_the_audio() -> None:
    endpointer = Endpointer(settings())
    run([0.0, 0.9, 0.9, 0.9, 0.9, 0.1], endpointer)
    endpointer.append_audio(np.full(100, 6, dtype=np.int16))  # a partial window, never scored
    end = endpointer.finish()
    assert end is not None and end.forced
    assert end.speech_end == 5 * WINDOW
    assert end.audio_start == 0 and len(end.audio) == 6 * WINDOW + 100
    assert not endpointer.in_speech and endpointer.finish() is None


def test_finish_drops_a_candidate_that_never_became_speech() -> None:
    endpointer = Endpointer(settings())
    run([0.0, 0.9], endpointer)
    assert endpointer.finish() is None
    assert run([0.9] * 3 + [0.0] * 5, endpointer)[0][1] == SpeechStart(2 * WINDOW)


def test_after_long_silence_only_the_preroll_is_kept() -> None:
    endpointer = Endpointer(settings(preroll_ms=64))
    run([0.0] * 1000, endpointer)
    end = run([0.9] * 3 + [0.0] * 5, endpointer)[-1][1]
    assert isinstance(end, SpeechEnd)
    assert windows_in(end.audio) == list(range(998, 1008))


def test_windows_must_come_in_order_and_after_their_audio() -> None:
    endpointer = Endpointer(settings())
    endpointer.append_audio(np.zeros(WINDOW, dtype=np.int16))
    with pytest.raises(ValueError, match="window end"):
        endpointer.update(0.9, 2 * WINDOW)
    endpointer.update(0.9, WINDOW)
    with pytest.raises(ValueError, match="window end"):
        endpointer.update(0.9, WINDOW)


def test_a_pause_is_announced_once_before_the_end_with_the_same_speech_end() -> None:
    from voxloop.stages.vad import SpeechPause

    endpointer = Endpointer(settings(speculate_ms=64))
    events = run([0.9] * 4 + [0.1] * 3 + [0.9] * 3 + [0.1] * 6, endpointer)
    kinds = [(index, type(event).__name__) for index, event in events]
    # speech from window 0; a pause 2 silent windows after window 3; speech resumes at 7;
    # a second pause after window 9, then the end after 5 silent windows (160 ms)
    assert kinds == [(2, "SpeechStart"), (5, "SpeechPause"), (11, "SpeechPause"), (14, "SpeechEnd")]
    first_pause, second_pause, end = (event for _, event in events[1:])
    assert isinstance(first_pause, SpeechPause)
    assert isinstance(second_pause, SpeechPause)
    assert isinstance(end, SpeechEnd)
    assert first_pause.speech_end == 4 * WINDOW
    assert second_pause.speech_end == end.speech_end == 10 * WINDOW
    # the speculative audio is the final utterance up to the pause: transcribing it is enough
    assert np.array_equal(end.audio[: len(second_pause.audio)], second_pause.audio)


def test_speculation_off_announces_no_pause() -> None:
    events = run([0.9] * 4 + [0.1] * 6, Endpointer(settings(speculate_ms=0)))
    assert [type(event).__name__ for _, event in events] == ["SpeechStart", "SpeechEnd"]


def test_a_finished_sentence_ends_the_turn_after_the_eager_hangover() -> None:
    endpointer = Endpointer(settings(speculate_ms=64, eager_hangover_ms=96))
    head = run([0.9] * 4 + [0.1] * 2, endpointer)  # speech, then the pause is announced
    assert [type(event).__name__ for _, event in head] == ["SpeechStart", "SpeechPause"]
    endpointer.sentence_finished(4 * WINDOW)  # the STT read the words up to the pause
    (ended_at, end), *_ = run([0.1] * 5, endpointer)
    assert isinstance(end, SpeechEnd) and end.eager and not end.forced
    assert end.speech_end == 4 * WINDOW
    assert ended_at == 6  # 3 silent windows = 96 ms, not the 5 of the whole hangover


def test_the_eager_hint_is_void_once_the_speaker_goes_on() -> None:
    endpointer = Endpointer(settings(speculate_ms=64, eager_hangover_ms=96))
    run([0.9] * 4 + [0.1] * 2, endpointer)
    endpointer.sentence_finished(4 * WINDOW)
    events = run([0.9] * 2 + [0.1] * 5, endpointer)  # more words: the hint was for an older end
    (ended_at, end), *_ = [(index, event) for index, event in events if isinstance(event, SpeechEnd)]
    assert isinstance(end, SpeechEnd) and not end.eager
    assert end.speech_end == 8 * WINDOW and ended_at == 12  # the whole 160 ms hangover
