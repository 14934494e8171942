"""The wake gate's policy and the detector's thresholds, without models (the detector gets a
scripted stand-in for openWakeWord)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from voxloop.pipeline.frames import PCM16
from voxloop.stages.wake import CHUNK, Detection, WakeDetector, WakeGate, WakeWordModel

SR = 16000
FRAME = 320  # 20 ms


def frames(gate: WakeGate, start: int, count: int, *, active: bool = False) -> list[tuple[int, int]]:
    """Admit `count` 20 ms frames from sample `start`; returns the non-empty passed ranges."""
    passed = []
    for index in range(count):
        lo, hi = gate.admit(start + index * FRAME, start + (index + 1) * FRAME, active=active)
        if hi > lo:
            passed.append((lo, hi))
    return passed


def test_asleep_nothing_passes_even_with_activity() -> None:
    gate = WakeGate(awake_s=2.0, tail_s=0.0)
    assert frames(gate, 0, 100) == []
    assert frames(gate, 100 * FRAME, 100, active=True) == []
    assert not gate.awake


def test_audio_passes_from_the_detection_point_not_before() -> None:
    gate = WakeGate(awake_s=2.0, tail_s=0.0)
    frames(gate, 0, 10)
    assert gate.wake(10 * FRAME + 123)
    first, second = frames(gate, 10 * FRAME, 2)
    assert first == (10 * FRAME + 123, 11 * FRAME)  # the wake word before it stays out
    assert second == (11 * FRAME, 12 * FRAME)


def test_the_rest_of_the_wake_word_after_the_detection_stays_out_too() -> None:
    gate = WakeGate(awake_s=2.0, tail_s=0.3)
    assert gate.wake(10 * FRAME)
    passed = frames(gate, 0, 200)
    assert passed[0] == (10 * FRAME + round(0.3 * SR), 11 * FRAME + round(0.3 * SR))
    assert passed[-1][1] == 10 * FRAME + round(2.3 * SR)  # awake_s counts from the opening


def test_the_gate_closes_after_awake_s_of_audio_without_a_turn() -> None:
    gate = WakeGate(awake_s=1.0, tail_s=0.0)
    gate.wake(1000)
    passed = frames(gate, 0, 200)
    assert passed[0][0] == 1000
    assert passed[-1][1] == 1000 + SR  # exactly awake_s of audio, cut mid-frame
    total = sum(hi - lo for lo, hi in passed)
    assert total == SR
    assert not gate.awake


def test_a_turn_in_progress_keeps_the_gate_open_and_the_timer_restarts_after_it() -> None:
    gate = WakeGate(awake_s=1.0, tail_s=0.0)
    gate.wake(0)
    assert len(frames(gate, 0, 40)) == 40  # 0.8 s idle
    assert len(frames(gate, 40 * FRAME, 250, active=True)) == 250  # a 5 s turn: never closes
    after = frames(gate, 290 * FRAME, 100)
    assert gate.awake is False
    assert after[-1][1] == 290 * FRAME + SR  # 1 s after the turn's last active audio


def test_hearing_the_wake_word_again_extends_but_does_not_reopen() -> None:
    gate = WakeGate(awake_s=1.0, tail_s=0.0)
    assert gate.wake(0)
    frames(gate, 0, 40)
    assert not gate.wake(40 * FRAME)  # already awake
    passed = frames(gate, 40 * FRAME, 100)
    assert passed[-1][1] == 40 * FRAME + SR


def test_it_can_wake_again_after_falling_asleep() -> None:
    gate = WakeGate(awake_s=0.5, tail_s=0.0)
    gate.wake(0)
    frames(gate, 0, 50)
    assert not gate.awake
    assert frames(gate, 50 * FRAME, 10) == []
    assert gate.wake(60 * FRAME + 7)
    assert frames(gate, 60 * FRAME, 1) == [(60 * FRAME + 7, 61 * FRAME)]


# --- the detector's thresholds, refractory period and chunking ------------------------------


class ScriptedOww:
    """Stands in for openWakeWord's Model: one score per word per 80 ms chunk, from a script."""

    def __init__(self, scripts: dict[str, Sequence[float]]) -> None:
        self._scripts: dict[str, Iterator[float]] = {key: iter(s) for key, s in scripts.items()}
        self.chunk_sizes: list[int] = []

    def predict(self, chunk: PCM16) -> dict[str, float]:
        self.chunk_sizes.append(len(chunk))
        return {key: next(script, 0.0) for key, script in self._scripts.items()}


def detector(scripts: dict[str, Sequence[float]], thresholds: dict[str, float]) -> WakeDetector:
    words = {
        f"{name}_v0.1": WakeWordModel(name, Path(f"/models/{name}_v0.1.onnx"), thresholds[name]) for name in scripts
    }
    model = ScriptedOww({f"{name}_v0.1": script for name, script in scripts.items()})
    return WakeDetector(model, words, refractory_samples=round(1.5 * SR))


def feed_in_frames(det: WakeDetector, chunks: int) -> list[Detection]:
    found: list[Detection] = []
    for _ in range(chunks * CHUNK // FRAME):
        found.extend(det.feed(np.zeros(FRAME, dtype=np.int16)))
    return found


def test_each_word_fires_at_its_own_threshold_at_the_end_of_the_chunk() -> None:
    det = detector(
        {"alexa": [0.0, 0.45, 0.1, 0.0], "hey_jarvis": [0.0, 0.45, 0.1, 0.0]},
        {"alexa": 0.4, "hey_jarvis": 0.5},
    )
    assert feed_in_frames(det, 4) == [Detection("alexa", 0.45, 2 * CHUNK)]


def test_one_utterance_fires_once_and_a_later_one_fires_again() -> None:
    said = [0.9] * 12 + [0.1]  # the score stays high for ~1 s after the word
    dip = [0.9, 0.2, 0.9, 0.1]  # a wobble within the refractory period
    det = detector({"alexa": [0.0] + said + dip + [0.0] * 20 + said}, {"alexa": 0.5})
    found = feed_in_frames(det, 60)
    assert [d.end_sample // CHUNK for d in found] == [2, 1 + 13 + 4 + 20 + 1]


def test_audio_is_scored_in_whole_80ms_chunks_whatever_the_frame_size() -> None:
    model = ScriptedOww({"alexa_v0.1": []})
    word = WakeWordModel("alexa", Path("/m/alexa_v0.1.onnx"), 0.5)
    det = WakeDetector(model, {"alexa_v0.1": word}, refractory_samples=SR)
    for size in (100, 1000, 3000, 7, 1253):
        det.feed(np.zeros(size, dtype=np.int16))
    assert set(model.chunk_sizes) == {CHUNK}
    assert det.position == 5360 // CHUNK * CHUNK


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_a_score_exactly_at_the_threshold_fires(threshold: float) -> None:
    det = detector({"alexa": [0.0, threshold]}, {"alexa": threshold})
    assert len(feed_in_frames(det, 2)) == 1
