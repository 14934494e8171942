"""The wake-word evaluation: score every clip once per word with the stage's own detector, then sweep.

    clips ─► silence + clip + silence ─► WakeDetector.feed (20 ms frames → 80 ms chunks) ─► score curves
    score curves ─► wake_metrics.sweep (per threshold: recall, latency, false accepts/hour)

The model runs once per clip (and chunk phase); every threshold is then a replay of the recorded
curves through the production detector, so the figures are those of the code that serves users.
A clip's scores can depend on where the 80 ms chunk boundaries fall; `phases` > 1 scores each
clip again shifted by 20 ms steps, as a live stream would place it anywhere on the chunk grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxloop.evals.eval_set import Clip, read_clip
from voxloop.evals.wake_metrics import Row, ScoredClip, sweep
from voxloop.pipeline.frames import PCM16
from voxloop.stages.wake import CHUNK, REFRACTORY_S, SAMPLE_RATE, WakeDetector, WakeModels, WakeWordModel

log = logging.getLogger(__name__)

FRAME = 320  # 20 ms, as the browser client sends audio; the detector buffers it into 80 ms chunks
PHASE_STEP = FRAME
# Silence before each clip: longer than the model's ~2 s window (16 embeddings of 0.76 s mel
# windows), so a clip never hears the one before and the model's random start-up state is gone.
LEAD_IN_S = 2.0
TAIL_S = 1.0  # silence after: the model goes on hearing the word's end for a few chunks
MAX_PHASES = CHUNK // PHASE_STEP


@dataclass(frozen=True, slots=True)
class WakeEvaluation:
    words: list[str]
    rows: dict[str, list[Row]]  # word -> one row per threshold
    clips: int
    phases: int
    audio_s: float  # audio the model heard, silence included
    score_s: float  # wall time spent scoring


class _ScoreTap:
    """Wraps the openWakeWord model and keeps every score it hands to the detector."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.scores: list[dict[str, float]] = []

    def predict(self, chunk: PCM16) -> Mapping[str, float]:
        scores: Mapping[str, float] = self._model.predict(chunk)
        self.scores.append({key: float(value) for key, value in scores.items()})
        return scores


class ClipScorer:
    """Streams clips through the stage's `WakeDetector` on one openWakeWord model, recording scores."""

    def __init__(self, models: WakeModels) -> None:
        self._tap = _ScoreTap(models.load_model())
        # openWakeWord names each model's score by its file name without the suffix
        self._words: dict[str, WakeWordModel] = {word.path.stem: word for word in models.words}

    @property
    def words(self) -> list[str]:
        return [word.name for word in self._words.values()]

    def score(self, pcm: PCM16, phase: int = 0) -> tuple[int, dict[str, list[float]]]:
        """(where the clip starts in the stream, each word's score per 80 ms chunk of the stream)."""
        offset = round(LEAD_IN_S * SAMPLE_RATE) + phase * PHASE_STEP
        stream = np.concatenate([np.zeros(offset, np.int16), pcm, np.zeros(round(TAIL_S * SAMPLE_RATE), np.int16)])
        detector = WakeDetector(self._tap, self._words, round(REFRACTORY_S * SAMPLE_RATE))
        self._tap.scores = []
        for start in range(0, len(stream), FRAME):
            detector.feed(stream[start : start + FRAME])
        curves = {word.name: [scores[key] for scores in self._tap.scores] for key, word in self._words.items()}
        return offset, curves


def score_clips(
    scorer: ClipScorer, clips: Sequence[Clip], phases: int = 1, progress: Callable[[int, int], None] | None = None
) -> list[ScoredClip]:
    """Every clip scored at `phases` chunk phases (0, 20, 40, 60 ms): one ScoredClip per pair."""
    if not 1 <= phases <= MAX_PHASES:
        raise ValueError(f"phases must be 1 to {MAX_PHASES} (20 ms steps within an 80 ms chunk), not {phases}")
    scored = []
    for index, clip in enumerate(clips):
        pcm = read_clip(clip)
        for phase in range(phases):
            offset, curves = scorer.score(pcm, phase)
            scored.append(_scored(clip, offset, curves))
        if progress is not None:
            progress(index + 1, len(clips))
    return scored


def _scored(clip: Clip, offset: int, curves: dict[str, list[float]]) -> ScoredClip:
    return ScoredClip(
        clip_id=clip.id,
        category=clip.category,
        phrase=clip.phrase,
        duration_s=clip.duration_s,
        voiced_end_s=clip.voiced_end_s,
        offset=offset,
        scores=curves,
    )


def evaluate(
    models: WakeModels,
    clips: Sequence[Clip],
    thresholds: Sequence[float],
    *,
    phases: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> WakeEvaluation:
    """Score the clips once, then a row per word and threshold. Blocking: run it off any event loop."""
    scorer = ClipScorer(models)
    started = time.perf_counter()
    scored = score_clips(scorer, clips, phases, progress)
    score_s = time.perf_counter() - started
    audio_s = sum(len(next(iter(s.scores.values()))) for s in scored) * CHUNK / SAMPLE_RATE
    log.info(
        "wake eval scored",
        extra={"event": "wake_eval_scored", "clips": len(clips), "phases": phases, "seconds": round(score_s, 1)},
    )
    rows = {word: sweep(word, scored, thresholds) for word in scorer.words}
    return WakeEvaluation(scorer.words, rows, len(clips), phases, audio_s, score_s)
