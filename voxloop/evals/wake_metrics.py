"""The wake-word figures from recorded score curves: no model runs here.

A curve is one word's openWakeWord score for each 80 ms chunk of one stream (a clip with
silence around it). `detections` replays a curve through the production `WakeDetector`, so a
threshold sweep applies exactly the stage's rule (cross the threshold, fall below it again,
and at most one detection per refractory period) without running the model again.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from voxloop.pipeline.frames import PCM16
from voxloop.stages.wake import CHUNK, REFRACTORY_S, SAMPLE_RATE, WakeDetector, WakeWordModel

SECONDS_PER_HOUR = 3600.0


class Role(Enum):
    TARGET = "target"  # the word itself: counts toward recall and latency
    PARTIAL = "partial"  # part of the phrase ("jarvis" for "hey jarvis"): fair either way, left out of FA
    NON_WAKE = "non-wake"  # music, noise, speech, other wake words: any detection is a false accept


@dataclass(frozen=True, slots=True)
class ScoredClip:
    """One stream's scores: a clip that starts `offset` samples into the stream, silence around it."""

    clip_id: str
    category: str
    phrase: str
    duration_s: float
    voiced_end_s: float | None
    offset: int
    scores: Mapping[str, Sequence[float]]  # word name -> score of each chunk; chunk i ends at (i + 1) * CHUNK


@dataclass(frozen=True, slots=True)
class Row:
    """One word at one threshold over the whole set."""

    word: str
    threshold: float
    targets: int  # target streams (clips x phases)
    detected: int
    partial_targets: int
    partial_detected: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    false_accepts: int
    non_wake_s: float  # audio scored for false accepts (clip seconds x phases)
    repeats: int  # detections after the first on a target clip
    fa_clips: tuple[str, ...] = ()  # the clip of each false accept

    @property
    def recall(self) -> float | None:
        return self.detected / self.targets if self.targets else None

    @property
    def fa_per_hour(self) -> float | None:
        return fa_per_hour(self.false_accepts, self.non_wake_s)


class _Replay:
    """Stands in for the openWakeWord model: hands back one recorded score per chunk."""

    def __init__(self, key: str, scores: Sequence[float]) -> None:
        self._key = key
        self._scores: Iterator[float] = iter(scores)

    def predict(self, chunk: PCM16) -> dict[str, float]:
        return {self._key: next(self._scores)}


def detections(scores: Sequence[float], threshold: float, refractory_s: float = REFRACTORY_S) -> list[int]:
    """Where the stage's detector fires on this curve: the end sample of each detecting chunk."""
    key = "word"
    words = {key: WakeWordModel(key, Path(f"{key}.onnx"), threshold)}
    detector = WakeDetector(_Replay(key, scores), words, round(refractory_s * SAMPLE_RATE))
    return [d.end_sample for d in detector.feed(np.zeros(len(scores) * CHUNK, dtype=np.int16))]


def role(word_phrase: str, clip: ScoredClip) -> Role:
    if clip.category != "wakeword":
        return Role.NON_WAKE
    if clip.phrase == word_phrase:
        return Role.TARGET
    said, word = clip.phrase.split(), word_phrase.split()
    if said and any(word[i : i + len(said)] == said for i in range(len(word))):
        return Role.PARTIAL
    return Role.NON_WAKE


def latency_s(first_detection: int, clip: ScoredClip) -> float:
    """Seconds from the end of the voice to the end of the chunk that fired (< 0: before it ended)."""
    if clip.voiced_end_s is None:
        raise ValueError(f"{clip.clip_id} has no voiced end: only wake-word clips have a latency")
    return (first_detection - clip.offset) / SAMPLE_RATE - clip.voiced_end_s


def fa_per_hour(count: int, seconds: float) -> float | None:
    return count * SECONDS_PER_HOUR / seconds if seconds > 0 else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (a value that occurred); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def phrase_of(word: str) -> str:
    """The words a model listens for, from its name: hey_jarvis_v0.1 -> "hey jarvis"."""
    name = re.sub(r"_v\d+(\.\d+)*$", "", word.lower())
    return " ".join(re.split(r"[_\-\s]+", name)).strip()


# --- the sweep ------------------------------------------------------------------------------


def sweep(
    word: str, clips: Sequence[ScoredClip], thresholds: Sequence[float], refractory_s: float = REFRACTORY_S
) -> list[Row]:
    """One row per threshold for `word` (a model name such as hey_jarvis) over every scored clip."""
    phrase = phrase_of(word)
    return [_row(word, phrase, clips, threshold, refractory_s) for threshold in thresholds]


@dataclass
class _Tally:
    targets: int = 0
    detected: int = 0
    partial_targets: int = 0
    partial_detected: int = 0
    false_accepts: int = 0
    non_wake_s: float = 0.0
    repeats: int = 0
    fa_clips: list[str] = dataclasses.field(default_factory=list)


def _row(word: str, phrase: str, clips: Sequence[ScoredClip], threshold: float, refractory_s: float) -> Row:
    tally, latencies = _Tally(), []
    for clip in clips:
        fired = detections(clip.scores[word], threshold, refractory_s)
        kind = role(phrase, clip)
        if kind is Role.TARGET:
            tally.targets += 1
            tally.detected += bool(fired)
            tally.repeats += max(0, len(fired) - 1)
            latencies += [latency_s(fired[0], clip)] if fired else []
        elif kind is Role.PARTIAL:
            tally.partial_targets += 1
            tally.partial_detected += bool(fired)
        else:
            tally.false_accepts += len(fired)
            tally.fa_clips += [clip.clip_id] * len(fired)
            tally.non_wake_s += clip.duration_s
    return Row(
        word=word,
        threshold=threshold,
        latency_p50_ms=_ms(percentile(latencies, 50)),
        latency_p95_ms=_ms(percentile(latencies, 95)),
        **{**dataclasses.asdict(tally), "fa_clips": tuple(tally.fa_clips)},
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def fa_sources(rows: Sequence[Row]) -> dict[str, float]:
    """Each clip that gave a false accept -> the highest threshold at which it still did."""
    highest: dict[str, float] = {}
    for row in rows:
        for clip_id in row.fa_clips:
            highest[clip_id] = max(highest.get(clip_id, 0.0), row.threshold)
    return dict(sorted(highest.items(), key=lambda item: -item[1]))


def recommend(rows: Sequence[Row], max_fa_per_hour: float) -> Row | None:
    """The middle of the thresholds that reach the best recall with FA/hour within the bound.

    The middle of that plateau, not its edge: the set is small, and a threshold with room on
    both sides is the one most likely to hold on voices and rooms it does not contain.
    """
    allowed = [r for r in rows if r.recall is not None and (r.fa_per_hour or 0.0) <= max_fa_per_hour]
    if not allowed:
        return None
    best = max(r.recall or 0.0 for r in allowed)
    plateau = sorted((r for r in allowed if r.recall == best), key=lambda r: r.threshold)
    return plateau[len(plateau) // 2]
