"""The wake-word evaluation's pure parts on hand-made score curves: the stage's firing rule
(refractory included), roles, latency, false accepts per hour, the sweep and the recommendation."""

from __future__ import annotations

import numpy as np
import pytest

from voxloop.evals.eval_set import voiced_end_s
from voxloop.evals.wake_metrics import (
    Role,
    Row,
    ScoredClip,
    detections,
    fa_per_hour,
    fa_sources,
    latency_s,
    percentile,
    phrase_of,
    recommend,
    role,
    sweep,
)
from voxloop.stages.wake import CHUNK, REFRACTORY_S, SAMPLE_RATE

CHUNK_S = CHUNK / SAMPLE_RATE  # 0.08
REFRACTORY_CHUNKS = round(REFRACTORY_S / CHUNK_S)  # 19 (1.52 s)


def curve(length: int, highs: dict[int, float]) -> list[float]:
    scores = [0.0] * length
    for index, score in highs.items():
        scores[index] = score
    return scores


def clip(
    clip_id: str, category: str, phrase: str, scores: list[float], *, voiced_end: float | None = None, word: str = "w"
) -> ScoredClip:
    return ScoredClip(
        clip_id=clip_id,
        category=category,
        phrase=phrase,
        duration_s=len(scores) * CHUNK_S,
        voiced_end_s=voiced_end,
        offset=0,
        scores={word: scores},
    )


# --- the firing rule (the production WakeDetector replaying a curve) -------------------------


def test_fires_at_the_end_of_the_first_chunk_at_or_over_the_threshold() -> None:
    scores = curve(10, {3: 0.4, 4: 0.5, 5: 0.9})
    assert detections(scores, 0.5) == [5 * CHUNK]
    assert detections(scores, 0.3) == [4 * CHUNK]
    assert detections(scores, 0.95) == []


def test_a_score_that_stays_high_fires_once() -> None:
    assert detections(curve(60, dict.fromkeys(range(5, 55), 0.99)), 0.5) == [6 * CHUNK]


def test_a_second_rise_within_the_refractory_period_is_ignored_and_after_it_fires() -> None:
    soon = curve(60, {5: 0.9, 5 + REFRACTORY_CHUNKS - 1: 0.9})
    assert detections(soon, 0.5) == [6 * CHUNK]
    late = curve(60, {5: 0.9, 5 + REFRACTORY_CHUNKS: 0.9})
    assert detections(late, 0.5) == [6 * CHUNK, (6 + REFRACTORY_CHUNKS) * CHUNK]
    assert detections(soon, 0.5, refractory_s=0.5) == [6 * CHUNK, (5 + REFRACTORY_CHUNKS) * CHUNK]


def test_a_score_must_fall_below_the_threshold_before_firing_again() -> None:
    held = curve(60, dict.fromkeys(range(5, 5 + REFRACTORY_CHUNKS + 10), 0.9))
    assert detections(held, 0.5) == [6 * CHUNK]  # past the refractory period, but never re-armed


# --- roles, latency, rates -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "said", "expected"),
    [
        ("wakeword", "hey jarvis", Role.TARGET),
        ("wakeword", "jarvis", Role.PARTIAL),
        ("wakeword", "hey", Role.PARTIAL),
        ("wakeword", "hey jane", Role.NON_WAKE),
        ("wakeword", "alexa", Role.NON_WAKE),
        ("utterance", "hey jarvis", Role.NON_WAKE),  # only wake-word clips can be targets
        ("music", "", Role.NON_WAKE),
    ],
)
def test_roles(category: str, said: str, expected: Role) -> None:
    assert role("hey jarvis", clip("c", category, said, [0.0])) is expected


def test_phrase_from_model_names() -> None:
    assert phrase_of("hey_jarvis") == "hey jarvis"
    assert phrase_of("hey_jarvis_v0.1") == "hey jarvis"
    assert phrase_of("alexa") == "alexa"


def test_latency_is_from_the_voiced_end_in_the_clip_not_the_stream() -> None:
    scored = ScoredClip("c", "wakeword", "w", 2.0, voiced_end_s=1.0, offset=SAMPLE_RATE, scores={})
    assert latency_s(SAMPLE_RATE + 18 * CHUNK, scored) == pytest.approx(0.44)
    assert latency_s(SAMPLE_RATE + 10 * CHUNK, scored) == pytest.approx(-0.2)  # fired before the word ended
    with pytest.raises(ValueError, match="no voiced end"):
        latency_s(0, clip("m", "music", "", [0.0]))


def test_false_accepts_per_hour() -> None:
    assert fa_per_hour(2, 1800.0) == 4.0
    assert fa_per_hour(0, 600.0) == 0.0
    assert fa_per_hour(0, 0.0) is None


def test_nearest_rank_percentile() -> None:
    values = [0.3, -0.1, 0.2, 0.0]
    assert percentile(values, 50) == 0.0
    assert percentile(values, 95) == 0.3
    assert percentile([0.1], 95) == 0.1
    assert percentile([], 50) is None


# --- the sweep -------------------------------------------------------------------------------------


def eval_set() -> list[ScoredClip]:
    """Two clips of the word (peaks 0.9 and 0.6), a partial phrase, and 90 s of non-wake audio
    in which music peaks at 0.45 twice, 3 s apart (two false accepts at low thresholds)."""
    return [
        clip("wake_a", "wakeword", "hey w", curve(30, {12: 0.9, 13: 0.95}), voiced_end=1.0, word="hey_w"),
        clip("wake_b", "wakeword", "hey w", curve(30, {14: 0.6}), voiced_end=1.0, word="hey_w"),
        clip("only_w", "wakeword", "w", curve(30, {14: 0.7}), voiced_end=1.0, word="hey_w"),
        clip("music", "music", "", curve(750, {100: 0.45, 140: 0.45}), word="hey_w"),
        clip("speech", "utterance", "hi there", curve(375, {50: 0.2}), word="hey_w"),
    ]


def by_threshold(rows: list[Row]) -> dict[float, Row]:
    return {row.threshold: row for row in rows}


def test_sweep_recall_latency_and_false_accepts() -> None:
    rows = by_threshold(sweep("hey_w", eval_set(), [0.1, 0.3, 0.5, 0.7, 0.92]))
    assert [(t, r.detected, r.targets) for t, r in rows.items()] == [
        (0.1, 2, 2),
        (0.3, 2, 2),
        (0.5, 2, 2),
        (0.7, 1, 2),
        (0.92, 1, 2),
    ]
    assert [rows[t].false_accepts for t in rows] == [3, 2, 0, 0, 0]  # speech at 0.1 only; music twice
    assert rows[0.3].fa_clips == ("music", "music")
    non_wake_s = (750 + 375) * CHUNK_S
    assert rows[0.1].non_wake_s == pytest.approx(non_wake_s)  # the partial clip is not non-wake audio
    assert rows[0.3].fa_per_hour == pytest.approx(2 * 3600 / non_wake_s)
    assert [(rows[t].partial_detected, rows[t].partial_targets) for t in (0.5, 0.92)] == [(1, 1), (0, 1)]
    # wake_a fires at the end of chunk 12 (1.04 s), wake_b at the end of chunk 14 (1.2 s); voice ends at 1 s
    assert (rows[0.5].latency_p50_ms, rows[0.5].latency_p95_ms) == (40.0, 200.0)
    assert (rows[0.92].latency_p50_ms, rows[0.92].recall) == (120.0, 0.5)  # chunk 13 only
    assert rows[0.5].repeats == 0


def test_each_clip_is_replayed_on_its_own() -> None:
    """A detection late in one clip does not hold back the next clip (no refractory across clips)."""
    first = clip("a", "wakeword", "w", curve(20, {19: 0.9}), voiced_end=1.0)
    second = clip("b", "wakeword", "w", curve(20, {0: 0.9}), voiced_end=0.0)
    (row,) = sweep("w", [first, second], [0.5])
    assert (row.detected, row.targets) == (2, 2)


def test_repeats_on_a_wake_clip_are_counted_apart_from_false_accepts() -> None:
    twice = clip("a", "wakeword", "w", curve(60, {5: 0.9, 40: 0.9}), voiced_end=0.4)
    (row,) = sweep("w", [twice], [0.5])
    assert (row.detected, row.repeats, row.false_accepts) == (1, 1, 0)


def test_fa_sources_give_the_highest_threshold_each_clip_fired_at() -> None:
    rows = sweep("hey_w", eval_set(), [0.1, 0.3, 0.5])
    assert fa_sources(rows) == {"music": 0.3, "speech": 0.1}


# --- the recommendation ------------------------------------------------------------------------------


def row(threshold: float, detected: int, false_accepts: int) -> Row:
    return Row("w", threshold, 10, detected, 0, 0, None, None, false_accepts, 3600.0, 0)


def test_recommends_the_middle_of_the_best_recall_within_the_fa_bound() -> None:
    rows = [row(0.1, 10, 3), row(0.2, 10, 1), row(0.3, 9, 0), row(0.4, 9, 0), row(0.5, 9, 0), row(0.6, 7, 0)]
    assert recommend(rows, max_fa_per_hour=0.0) == rows[3]  # 0.3-0.5 reach 9/10 with no FA
    assert recommend(rows, max_fa_per_hour=1.0) == rows[1]  # 0.2 reaches 10/10 with 1 FA/h
    assert recommend([row(0.5, 10, 2)], max_fa_per_hour=1.0) is None


# --- where the voice ends ------------------------------------------------------------------------------


def tone(seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return amplitude * np.sin(2 * np.pi * 220 * t)


def test_voiced_end_over_digital_silence() -> None:
    pcm = np.concatenate([np.zeros(8000), tone(0.6, 8000), np.zeros(16000)]).astype(np.int16)
    assert voiced_end_s(pcm) == pytest.approx(1.1, abs=0.021)


def test_voiced_end_over_a_noise_floor_within_35_db_of_the_peak() -> None:
    """The README's peak - 35 dB alone would call the whole clip voiced; the floor rule does not."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 300, 2 * SAMPLE_RATE)  # ~ -30 dB below the tone
    voice = np.concatenate([np.zeros(8000), tone(0.7, 8000), np.zeros(2 * SAMPLE_RATE - 8000 - 11200)])
    assert voiced_end_s((noise + voice).astype(np.int16)) == pytest.approx(1.2, abs=0.021)
