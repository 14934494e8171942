"""The hallucination guard's rules, without the model.

Scores in these cases are of the kind Whisper tiny.en gives: real speech has no_speech_prob
near 0 and avg_logprob around -0.2..-0.4; noise and silence come back as "you", "." or
"Thank you." with no_speech_prob 0.6..0.95 and avg_logprob under -1.
"""

from __future__ import annotations

import pytest

from voxloop.pipeline.config import SttSettings
from voxloop.stages.stt import HallucinationGuard, Segment, normalise, reads_finished


@pytest.fixture
def guard() -> HallucinationGuard:
    return HallucinationGuard.from_settings(SttSettings())


def speech(text: str) -> Segment:
    return Segment(text, no_speech_prob=0.02, avg_logprob=-0.25, compression_ratio=1.1)


def test_real_speech_is_kept_as_said(guard: HallucinationGuard) -> None:
    verdict = guard.judge([speech(" Go forward 10 meters.")])
    assert verdict.rejected_reason is None
    assert verdict.text == "Go forward 10 meters."


def test_segments_are_joined_and_bad_ones_dropped(guard: HallucinationGuard) -> None:
    noise = Segment(" you", no_speech_prob=0.9, avg_logprob=-1.4, compression_ratio=0.3)
    verdict = guard.judge([speech(" Turn on the lights."), noise, speech(" And the fan.")])
    assert verdict == verdict.__class__("Turn on the lights. And the fan.", None)


@pytest.mark.parametrize(
    ("no_speech_prob", "avg_logprob", "rejected"),
    [
        (0.9, -1.3, True),  # likely silence and not confidently decoded: Whisper skips it
        (0.9, -0.5, False),  # confident text despite a high no-speech probability: keep
        (0.3, -1.9, False),  # low confidence alone is not silence (the text rules may still act)
        (0.61, -1.01, True),
        (0.6, -1.5, False),  # thresholds are strict inequalities, as in Whisper
    ],
)
def test_whispers_no_speech_rule(
    guard: HallucinationGuard, no_speech_prob: float, avg_logprob: float, rejected: bool
) -> None:
    segment = Segment("Open the door please.", no_speech_prob, avg_logprob)
    assert (guard.judge([segment]).rejected_reason == "no_speech") is rejected


@pytest.mark.parametrize(("avg_logprob", "rejected"), [(-1.9, False), (-2.1, True), (-3.5, True)])
def test_far_below_the_logprob_threshold_is_noise_whatever_no_speech_says(
    guard: HallucinationGuard, avg_logprob: float, rejected: bool
) -> None:
    segment = Segment(" The", no_speech_prob=0.45, avg_logprob=avg_logprob)
    assert (guard.judge([segment]).rejected_reason == "low_confidence") is rejected


def test_thresholds_come_from_settings() -> None:
    strict = HallucinationGuard.from_settings(SttSettings(no_speech_threshold=0.2, logprob_threshold=-0.1))
    assert strict.judge([Segment("Hello there.", 0.3, -0.15)]).rejected_reason == "no_speech"
    lenient = HallucinationGuard.from_settings(SttSettings(logprob_threshold=-1.5))
    assert lenient.judge([Segment("Hello there.", 0.1, -2.5)]).rejected_reason is None
    assert lenient.judge([Segment("Hello there.", 0.1, -3.1)]).rejected_reason == "low_confidence"


def test_repetition_loop_is_rejected(guard: HallucinationGuard) -> None:
    loop = Segment("the the the " * 40, no_speech_prob=0.1, avg_logprob=-0.3, compression_ratio=9.5)
    assert guard.judge([loop]).rejected_reason == "repetitive"


PHANTOMS = [
    *(" you", "Thanks for watching!", "THANK YOU FOR WATCHING", "Thanks for watching. Thanks for watching."),
    *("Subtitles by the Amara.org community", "Music", "[Music]", "(applause)"),
]


@pytest.mark.parametrize("text", PHANTOMS)
def test_phantom_phrases_alone_are_rejected(guard: HallucinationGuard, text: str) -> None:
    reason = guard.judge([speech(text)]).rejected_reason
    assert reason in ("phantom", "no_words")


def test_short_thanks_is_kept_when_clear_but_not_in_noise(guard: HallucinationGuard) -> None:
    # A user may well say just "Thank you." or "Bye." to an assistant: only the scores can tell
    # that from Whisper's favourite hallucination on noise.
    for text in ("Thank you.", "Bye."):
        assert guard.judge([speech(text)]).rejected_reason is None
        noise = Segment(text, no_speech_prob=0.8, avg_logprob=-1.2, compression_ratio=0.5)
        assert guard.judge([noise]).rejected_reason is not None


def test_phantom_phrase_inside_a_real_sentence_is_kept(guard: HallucinationGuard) -> None:
    for text in ("Thank you for the help.", "Thanks for watching and I hope you enjoyed the demo."):
        assert guard.judge([speech(text)]) == guard.judge([speech(text)]).__class__(text, None)


def test_phantom_list_is_configurable() -> None:
    guard = HallucinationGuard.from_settings(SttSettings(phantom_phrases=["okay computer"]))
    assert guard.judge([speech("Okay, computer.")]).rejected_reason == "phantom"
    assert guard.judge([speech("Thanks for watching.")]).rejected_reason is None  # no longer listed


@pytest.mark.parametrize("text", [".", " ...", "?!", " ♪ ♪", "[BLANK_AUDIO]", "- -"])
def test_punctuation_and_annotations_only_are_rejected(guard: HallucinationGuard, text: str) -> None:
    assert guard.judge([speech(text)]).rejected_reason == "no_words"


def test_annotations_are_removed_from_kept_text(guard: HallucinationGuard) -> None:
    assert guard.judge([speech("(laughs) That is funny. [Music]")]).text == "That is funny."


@pytest.mark.parametrize("text", ["Mmm... Mmm...", "Hmm.", "Uh, um.", "Ah!"])
def test_fillers_alone_are_rejected(guard: HallucinationGuard, text: str) -> None:
    assert guard.judge([speech(text)]).rejected_reason == "filler"


def test_filler_with_words_is_kept(guard: HallucinationGuard) -> None:
    assert guard.judge([speech("Hmm, what time is it?")]).rejected_reason is None


def test_no_segments_is_empty(guard: HallucinationGuard) -> None:
    assert guard.judge([]).rejected_reason == "empty"
    assert guard.judge([speech("  ")]).rejected_reason == "empty"


def test_short_audio_threshold(guard: HallucinationGuard) -> None:
    assert guard.too_short(0.15)
    assert not guard.too_short(0.2)


def test_normalise() -> None:
    assert normalise("  Thank-you, Amara.org!  It's ♪ OK ") == "thank you amara org its ok"


@pytest.mark.parametrize(
    ("text", "finished"),
    [
        ("What time is it?", True),
        ("Turn on the lights.", True),
        ("Yes!", True),
        ("I was thinking that", False),  # no full stop: Whisper heard no end
        ("I went to the shop and.", False),  # a sentence does not end on "and"
        ("Take me to the.", False),
        ("Well...", False),  # a trailing ellipsis is a voice trailing off
        ("Hmm, so um.", False),
        ("", False),
    ],
)
def test_reads_finished_only_for_closed_sentences(text: str, finished: bool) -> None:
    assert reads_finished(text) is finished


def test_the_encoder_window_is_the_audio_plus_a_margin_between_the_floor_and_30_s() -> None:
    from voxloop.stages.stt import window_s

    settings = SttSettings()  # window_min_s 10, window_margin_s 3
    assert window_s(2.0, settings) == 10.0  # short utterances: the floor (shorter floors loop)
    assert window_s(9.5, settings) == 12.5
    assert window_s(29.0, settings) == 30.0  # never past Whisper's window
    assert window_s(2.0, SttSettings(window_min_s=0)) == 30.0  # 0: the full window always
