"""openWakeWord detection on real wake-word clips and hard negatives, and the wake gate in a
graph in front of the VAD on a conversation mixing wake words, commands, music and noise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.clock import ManualClock
from voxloop.pipeline.config import VadSettings, WakeSettings, WakeWord
from voxloop.pipeline.errors import ConfigError
from voxloop.pipeline.frames import (
    PCM16,
    AudioInput,
    Frame,
    SpeechStarted,
    WakeWordDetected,
)
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.testing import NoWords, replay
from voxloop.stages.vad import SileroVadModel, VadStage, load_vad_model
from voxloop.stages.wake import CHUNK, WAKE_TAIL_S, Detection, WakeModels, WakeStage, load_wake_models

pytestmark = pytest.mark.integration

SR = 16000
FRAME = 320
NS_PER_SAMPLE = 1_000_000_000 // SR
LABELS = {"hey jarvis": "hey_jarvis", "alexa": "alexa", "hey mycroft": "hey_mycroft"}
SETTINGS = WakeSettings(enabled=True, words=[WakeWord(name=word) for word in LABELS.values()])
PAD = np.zeros(SR, dtype=np.int16)


@pytest.fixture(scope="module")
def wake_models(asset_store: AssetStore) -> Iterator[WakeModels]:
    models = load_wake_models(SETTINGS, asset_store)
    yield models
    models.close()


def detect(models: WakeModels, pcms: list[PCM16]) -> list[list[Detection]]:
    """Each clip's detections, the clips streamed through one detector in 20 ms frames with a
    second of silence on each side: two seconds apart, more than the refractory period and
    the model's 1.3 s window, so one clip can neither mask nor feed the next."""
    detector = models.new_detector()
    found: list[list[Detection]] = []
    for pcm in pcms:
        stream = np.concatenate([PAD, pcm, PAD])
        heard: list[Detection] = []
        for i in range(0, len(stream), FRAME):
            heard.extend(detector.feed(stream[i : i + FRAME]))
        found.append(heard)
    return found


def load(eval_dir: Path, rows: list[dict[str, str]]) -> list[PCM16]:
    return [read_wav(eval_dir / row["file"])[0] for row in rows]


def clips(manifest: list[dict[str, str]], *categories: str) -> list[dict[str, str]]:
    return [row for row in manifest if row["category"] in categories]


def test_each_wake_word_clip_fires_its_word(
    wake_models: WakeModels, manifest: list[dict[str, str]], eval_dir: Path
) -> None:
    hits: dict[str, list[bool]] = {word: [] for word in LABELS.values()}
    wrong: list[tuple[str, str]] = []
    rows = [r for r in clips(manifest, "wakeword") if r["transcript_norm"] in LABELS]
    for row, found in zip(rows, detect(wake_models, load(eval_dir, rows)), strict=True):
        word = LABELS[row["transcript_norm"]]
        hits[word].append(any(d.word == word for d in found))
        wrong.extend((row["id"], d.word) for d in found if d.word != word)
        assert len([d for d in found if d.word == word]) <= 1, f"{row['id']}: one utterance, one detection"
    print("\nwake word recall:", {word: f"{sum(h)}/{len(h)}" for word, h in hits.items()})
    assert wrong == []
    for word, h in hits.items():
        assert len(h) >= 1 and sum(h) / len(h) >= 0.75, (word, h)


def fired(models: WakeModels, eval_dir: Path, rows: list[dict[str, str]]) -> dict[str, list[Detection]]:
    found = detect(models, load(eval_dir, rows))
    return {row["id"]: heard for row, heard in zip(rows, found, strict=True) if heard}


def test_other_wake_words_noise_and_silence_never_fire(
    wake_models: WakeModels, manifest: list[dict[str, str]], eval_dir: Path
) -> None:
    rows = [r for r in clips(manifest, "wakeword") if r["transcript_norm"] not in LABELS]
    rows = [r for r in rows if r["transcript_norm"] != "jarvis"]  # "jarvis" alone may fairly fire hey_jarvis
    rows += clips(manifest, "noise", "silence")
    assert {"gen_white_noise_5s", "noise_office_ambience", "pv_computer_1"} <= {r["id"] for r in rows}
    assert fired(wake_models, eval_dir, rows) == {}


def test_music_rarely_fires(wake_models: WakeModels, manifest: list[dict[str, str]], eval_dir: Path) -> None:
    rows = clips(manifest, "music")
    false_accepts = fired(wake_models, eval_dir, rows)
    print(f"\nfalse accepts in {len(rows)} music clips: {false_accepts}")
    # Known: the opening bars of music_brahms_hungarian5 score 0.39-0.76 for "alexa",
    # depending on where the 80 ms chunks fall.
    assert sum(map(len, false_accepts.values())) <= 1


def test_ordinary_speech_rarely_fires(wake_models: WakeModels, manifest: list[dict[str, str]], eval_dir: Path) -> None:
    rows = clips(manifest, "utterance")
    seconds = sum(float(r["duration_s"]) for r in rows)
    false_accepts = [(k, d.word, round(d.score, 2)) for k, v in fired(wake_models, eval_dir, rows).items() for d in v]
    print(f"\nfalse accepts in {seconds:.0f} s of ordinary speech ({len(rows)} clips): {false_accepts}")
    assert len(false_accepts) <= seconds / 300  # at most one per five minutes of speech


def test_unknown_words_and_missing_paths_are_config_errors(asset_store: AssetStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hey_jarvis"):
        load_wake_models(WakeSettings(words=[WakeWord(name="hey_siri")]), asset_store)
    (tmp_path / "word.tflite").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"not an \.onnx model"):
        load_wake_models(WakeSettings(words=[WakeWord(name=str(tmp_path / "word.tflite"))]), asset_store)


# --- the stage in a graph -------------------------------------------------------------------


class PacedWake(WakeStage):
    """The wake stage on a clock that reads the end of the frame it is working on."""

    def __init__(self, session: Session, clock: ManualClock, models: WakeModels) -> None:
        super().__init__(session, SETTINGS, models)
        self.clock = clock
        self.states: list[tuple[int, State]] = []

    async def start(self) -> None:
        await super().start()
        self.states.append((0, self.session.state))

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, AudioInput)
        self.clock.t_ns = frame.t_ns + len(frame.pcm) * NS_PER_SAMPLE
        async for out in super().process(frame):
            yield out
        if self.session.state != self.states[-1][1]:
            self.states.append((self.clock.t_ns // NS_PER_SAMPLE, self.session.state))


class Tap(StageBase):
    """Records which input samples got past the wake gate, then passes them on."""

    name = "tap"
    handles = (AudioInput,)

    def __init__(self) -> None:
        self.passed: list[tuple[int, int]] = []  # (first sample, last + 1)

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, AudioInput)
        start = frame.t_ns // NS_PER_SAMPLE
        if self.passed and self.passed[-1][1] == start:
            self.passed[-1] = (self.passed[-1][0], start + len(frame.pcm))
        else:
            self.passed.append((start, start + len(frame.pcm)))
        yield frame


@pytest.fixture(scope="module")
def vad_model(asset_store: AssetStore) -> Iterator[SileroVadModel]:
    model = load_vad_model(asset_store)
    yield model
    model.close()


@dataclass
class GatedRun:
    """What happened when dev_conv03 streamed through wake → tap → VAD. Times in input samples."""

    detections: list[tuple[str, int]]  # (word, end of the frame that carried it)
    passed: list[tuple[int, int]]
    states: list[tuple[int, State]]
    turn_starts: list[int]
    segments: list[dict[str, str]]

    def to_input(self, gated_sample: int) -> int:
        """Where a sample of the gated stream (as the VAD counts) lies in the input."""
        for start, end in self.passed:
            if gated_sample < end - start:
                return start + gated_sample
            gated_sample -= end - start
        raise AssertionError("beyond the audio that passed")

    def span(self, clip_id: str) -> tuple[int, int]:
        row = next(r for r in self.segments if r["clip_id"] == clip_id)
        return round(float(row["voiced_start_s"]) * SR), round(float(row["voiced_end_s"]) * SR)

    def wake_clip_at(self, at: int) -> dict[str, str]:
        """The wake-word segment a detection at `at` belongs to: voiced, or up to 1 s after."""
        return next(
            r
            for r in self.segments
            if r["kind"] == "wakeword" and self.span(r["clip_id"])[0] < at <= self.span(r["clip_id"])[1] + SR
        )

    def waking(self) -> list[tuple[str, int]]:
        """The detections that woke the gate (the others came while it was open)."""
        woke_at = {t for t, state in self.states if state is State.LISTENING}
        return [d for d in self.detections if d[1] in woke_at]


TAIL = round(WAKE_TAIL_S * SR)


async def run_gated(
    pcm: PCM16, wake_models: WakeModels, vad_model: SileroVadModel
) -> tuple[list[Frame], PacedWake, Tap]:
    clock = ManualClock()
    session = Session(clock=clock)
    wake, tap = PacedWake(session, clock, wake_models), Tap()
    stages = [wake, tap, VadStage(session, VadSettings(), vad_model), NoWords(session)]
    frames = (
        AudioInput(session_id=session.id, t_ns=i * NS_PER_SAMPLE, pcm=pcm[i : i + FRAME])
        for i in range(0, len(pcm), FRAME)
    )
    async with Graph(session, stages) as graph:
        out = await replay(graph, frames)
    return out, wake, tap


@pytest.fixture(scope="module")
def gated(
    wake_models: WakeModels, vad_model: SileroVadModel, eval_dir: Path, conversations: list[dict[str, str]]
) -> GatedRun:
    pcm = read_wav(eval_dir / "conversations" / "dev_conv03_noise_wake.wav")[0]
    out, wake, tap = asyncio.run(run_gated(pcm, wake_models, vad_model))
    run = GatedRun(
        detections=[(f.word, f.t_ns // NS_PER_SAMPLE) for f in out if isinstance(f, WakeWordDetected)],
        passed=tap.passed,
        states=wake.states,
        turn_starts=[],
        segments=[r for r in conversations if r["conv_id"] == "dev_conv03_noise_wake"],
    )
    run.turn_starts = [run.to_input(round(f.audio_offset_s * SR)) for f in out if isinstance(f, SpeechStarted)]
    print("\ndetections (word, s):", [(w, t / SR) for w, t in run.detections])
    print("passed (s):", [(a / SR, b / SR) for a, b in run.passed])
    print("turns start (s):", [t / SR for t in run.turn_starts])
    return run


def test_no_audio_passes_before_the_first_wake_word(gated: GatedRun) -> None:
    word, at = gated.detections[0]
    start, end = gated.span("pv_alexa_3")  # after 7 s of music and silence
    assert word == "alexa" and start < at <= end + SR // 2
    assert gated.passed[0][0] == gated.waking()[0][1] // CHUNK * CHUNK + TAIL


def test_detections_are_the_spoken_wake_words(gated: GatedRun) -> None:
    wake_rows = [r for r in gated.segments if r["kind"] == "wakeword"]
    heard = set()
    for word, at in gated.detections:
        row = next(r for r in wake_rows if gated.span(r["clip_id"])[0] < at <= gated.span(r["clip_id"])[1] + SR)
        assert (LABELS | {"jarvis": "hey_jarvis"}).get(row["transcript"].lower()) == word, row["clip_id"]
        heard.add(row["clip_id"])
    assert {"pv_alexa_3", "wyoming_hey_jarvis", "oww_hey_mycroft_test"} <= heard


def test_audio_passes_only_from_just_after_a_detection_until_the_gate_sleeps(gated: GatedRun) -> None:
    waking = gated.waking()
    assert len(waking) == len(gated.passed) >= 3
    for (_, at), (start, _) in zip(waking, gated.passed, strict=True):
        assert (start - TAIL) % CHUNK == 0 and at - FRAME < start - TAIL <= at  # a chunk end in that frame
    expected_states = [(0, State.ASLEEP)]
    for start, end in gated.passed:
        expected_states += [(start - TAIL, State.LISTENING), (end, State.ASLEEP)]
    # Sleeping and waking only: turns in between pass through thinking and back to listening.
    sleep_wake = [
        (t, s)
        for i, (t, s) in enumerate(gated.states)
        if s is State.ASLEEP or i == 0 or gated.states[i - 1][1] is State.ASLEEP
    ]
    assert [(t // FRAME, s) for t, s in sleep_wake] == [(t // FRAME, s) for t, s in expected_states]


def test_commands_pass_whole_and_speech_after_the_gate_sleeps_does_not(gated: GatedRun) -> None:
    def passed_part(clip_id: str) -> float:
        start, end = gated.span(clip_id)
        inside = sum(max(0, min(end, b) - max(start, a)) for a, b in gated.passed)
        return inside / (end - start)

    # commands after alexa, hey mycroft and the first jarvis
    assert [passed_part(c) for c in ("vosk_digits", "rstt_demo_08")] == [1.0, 1.0]
    # after "computer" and "snowboy" (no model for them), once 8 s passed without a turn
    assert [passed_part(c) for c in ("ami_ES2011a_40-46s", "sr_one_two_three")] == [0.0, 0.0]


def test_the_rest_of_a_wake_word_opens_no_turn(gated: GatedRun) -> None:
    assert len(gated.waking()) >= 3
    for word, at in gated.waking():
        clip = gated.wake_clip_at(at)["clip_id"]
        first_turn = next(t for t in gated.turn_starts if t > at - FRAME)  # the detection's frame on
        assert first_turn > gated.span(clip)[1], (word, clip)
