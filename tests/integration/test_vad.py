"""Silero VAD + endpointer on real recordings, and the VAD stage in a real graph.

The conversation files join whole clips with known placement; conversations.tsv gives each
clip's voiced span, estimated from 20 ms frames with energy above (clip peak - 35 dB). Where a
clip's own noise floor lies above that level (room tone, tape hiss), the estimate marks noise
as voice and reaches to the clip's edges: such a boundary only bounds the speech from outside,
so it is checked one-sided (no detection beyond it) instead of to ±150 ms.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.clock import ManualClock
from voxloop.pipeline.config import VadSettings
from voxloop.pipeline.errors import AssetError
from voxloop.pipeline.frames import PCM16, AudioInput, EndOfInput, Frame, SpeechEnded, SpeechStarted
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.testing import NoWords, replay
from voxloop.stages.vad import (
    WINDOW,
    Endpointer,
    SileroVadModel,
    SpeechEnd,
    VadStage,
    load_vad_model,
)

pytestmark = pytest.mark.integration

SR = 16000
FRAME = 320  # 20 ms pieces, as a microphone delivers them
TOLERANCE_S = 0.150  # the acceptance bar
SETTINGS = VadSettings()
CONVERSATIONS = [
    "dev_conv01_turns",
    "dev_conv01_turns_noisefloor",
    "dev_conv02_pause_ladder",
    "dev_conv02_pause_ladder_noisefloor",
]


@pytest.fixture(scope="module")
def vad_model(asset_store: AssetStore) -> Iterator[SileroVadModel]:
    model = load_vad_model(asset_store)
    yield model
    model.close()


def detect(model: SileroVadModel, pcm: PCM16, settings: VadSettings = SETTINGS) -> list[SpeechEnd]:
    """Stream `pcm` in 20 ms pieces through a fresh stream and endpointer; the utterances found."""
    stream, endpointer = model.new_stream(), Endpointer(settings)
    ends: list[SpeechEnd] = []
    for i in range(0, len(pcm), FRAME):
        piece = pcm[i : i + FRAME]
        endpointer.append_audio(piece)
        probs = stream.probabilities(piece)
        first_end = stream.samples_done - (len(probs) - 1) * WINDOW
        for k, prob in enumerate(probs):
            ends.extend(e for e in endpointer.update(prob, first_end + k * WINDOW) if isinstance(e, SpeechEnd))
    last = endpointer.finish()
    return ends + ([last] if last else [])


# --- segment accuracy on the conversation files ---------------------------------------------


@dataclass
class RefGroup:
    """Reference speech spans closer than the hangover, which legitimately merge into one turn."""

    start: float
    end: float
    clips: list[str]
    start_sharp: bool  # the reference boundary is a real voice onset, not the clip's noise floor
    end_sharp: bool


def clip_floor_is_quiet(pcm: PCM16, row: dict[str, str]) -> bool:
    """Is the clip's noise floor (10th percentile frame energy) below the reference's threshold?"""
    clip = pcm[round(float(row["start_s"]) * SR) : round(float(row["end_s"]) * SR)].astype(np.float64)
    count = len(clip) // FRAME
    energy = np.mean(clip[: count * FRAME].reshape(count, FRAME) ** 2, axis=1)
    db = 10 * np.log10(energy[energy > 0])
    return bool(np.percentile(db, 10) < db.max() - 35)


def reference_groups(conv_id: str, rows: list[dict[str, str]], clean: PCM16) -> list[RefGroup]:
    groups: list[RefGroup] = []
    for row in rows:
        if row["conv_id"] != conv_id or row["kind"] not in ("speech", "wakeword"):
            continue
        start, end = float(row["voiced_start_s"]), float(row["voiced_end_s"])
        sharp = clip_floor_is_quiet(clean, row)
        if groups and start - groups[-1].end <= SETTINGS.hangover_ms / 1000:
            last = groups[-1]
            last.end, last.end_sharp = end, sharp
            last.clips.append(row["clip_id"])
        else:
            groups.append(RefGroup(start, end, [row["clip_id"]], sharp, sharp))
    return groups


@dataclass
class Match:
    group: RefGroup
    start: float | None = None  # detected start of the first utterance overlapping the group
    end: float | None = None  # detected end of the last one


@dataclass
class ConvResult:
    matches: list[Match]
    false_starts: list[tuple[float, float]]
    bridging: list[tuple[float, float]]  # detections spanning two reference groups


def match(groups: list[RefGroup], detected: list[tuple[float, float]]) -> ConvResult:
    matches = [Match(g) for g in groups]
    false_starts, bridging = [], []
    for start, end in detected:
        hit = [m for m in matches if start < m.group.end + TOLERANCE_S and end > m.group.start - TOLERANCE_S]
        if not hit:
            false_starts.append((start, end))
        if len(hit) > 1:
            bridging.append((start, end))
        for m in hit:
            m.start = start if m.start is None else min(m.start, start)
            m.end = end if m.end is None else max(m.end, end)
    return ConvResult(matches, false_starts, bridging)


@pytest.fixture(scope="module")
def results(vad_model: SileroVadModel, eval_dir: Path, conversations: list[dict[str, str]]) -> dict[str, ConvResult]:
    out = {}
    for name in CONVERSATIONS:
        conv_id = name.removesuffix("_noisefloor")
        clean = read_wav(eval_dir / "conversations" / f"{conv_id}.wav")[0]
        pcm = read_wav(eval_dir / "conversations" / f"{name}.wav")[0]
        detected = [(e.speech_start / SR, e.speech_end / SR) for e in detect(vad_model, pcm)]
        out[name] = match(reference_groups(conv_id, conversations, clean), detected)
        print_table(name, out[name])
    return out


def print_table(name: str, result: ConvResult) -> None:
    print(f"\n{name}: reference turn (voiced span) -> detected span, error ms (~ = one-sided reference)")
    for m in result.matches:
        g = m.group
        if m.start is None or m.end is None:
            print(f"  {'+'.join(g.clips)[:44]:<44} {g.start:7.3f}-{g.end:7.3f}  MISSED")
            continue
        marks = ("" if g.start_sharp else "~", "" if g.end_sharp else "~")
        print(
            f"  {'+'.join(g.clips)[:44]:<44} {g.start:7.3f}-{g.end:7.3f} -> {m.start:7.3f}-{m.end:7.3f}"
            f"  {marks[0]}{(m.start - g.start) * 1000:+5.0f} {marks[1]}{(m.end - g.end) * 1000:+5.0f}"
        )
    print(f"  false starts: {result.false_starts}")


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_every_turn_is_found_once_and_nothing_else(name: str, results: dict[str, ConvResult]) -> None:
    result = results[name]
    assert [m.group.clips for m in result.matches if m.start is None] == []
    assert result.false_starts == []
    assert result.bridging == []  # turns further apart than the hangover stay apart


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_detections_stay_inside_noisy_references_and_cover_them(name: str, results: dict[str, ConvResult]) -> None:
    for m in results[name].matches:
        assert m.start is not None and m.end is not None
        g = m.group
        if not g.start_sharp:
            assert m.start >= g.start - TOLERANCE_S, g.clips
        if not g.end_sharp:
            assert m.end <= g.end + TOLERANCE_S, g.clips
        assert m.end - m.start >= 0.75 * (g.end - g.start), g.clips


def test_sharp_boundaries_are_found_within_150ms(results: dict[str, ConvResult]) -> None:
    errors = []
    for result in results.values():
        for m in result.matches:
            assert m.start is not None and m.end is not None
            if m.group.start_sharp:
                errors.append(m.start - m.group.start)
            if m.group.end_sharp:
                errors.append(m.end - m.group.end)
    within = [abs(e) <= TOLERANCE_S for e in errors]
    print(f"\nsharp boundaries within 150 ms: {sum(within)}/{len(errors)}; worst {max(map(abs, errors)):.3f} s")
    assert len(errors) >= 30
    assert sum(within) / len(within) >= 0.9
    # A start later than the pre-roll would cut speech from the utterance.
    assert max(abs(e) for e in errors) < SETTINGS.preroll_ms / 1000


@pytest.mark.parametrize("clip", ["gen_silence_5s", "gen_white_noise_5s"])
def test_no_speech_in_silence_or_white_noise(clip: str, vad_model: SileroVadModel, eval_dir: Path) -> None:
    pcm = read_wav(eval_dir / "audio" / f"{clip}.wav")[0]
    assert detect(vad_model, pcm) == []


def test_a_local_model_path_loads_and_a_missing_one_says_what_to_do(
    asset_store: AssetStore, asset_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model = load_vad_model(asset_store, str(asset_dir("silero-vad") / "silero_vad.onnx"))
    model.close()
    with pytest.raises(AssetError, match="does not exist"):
        load_vad_model(asset_store, str(tmp_path / "nope.onnx"))


# --- the stage ------------------------------------------------------------------------------


class PacedVad(VadStage):
    """The VAD stage on a clock that reads the end of the frame it is working on, as it would
    live; records the turn's trace marks as each SpeechEnded leaves."""

    def __init__(self, session: Session, clock: ManualClock, model: SileroVadModel) -> None:
        super().__init__(session, SETTINGS, model)
        self.clock = clock
        self.marks: list[dict[str, int]] = []

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, AudioInput):
            self.clock.t_ns = frame.t_ns + len(frame.pcm) * 1_000_000_000 // SR
        async for out in super().process(frame):
            if isinstance(out, SpeechEnded) and out.final:
                self.marks.append(dict(self.session.trace.marks))
            yield out


def audio_frames(session: Session, pcm: PCM16) -> list[AudioInput]:
    """20 ms frames whose t_ns is their place in the stream, as if arriving in real time."""
    return [
        AudioInput(session_id=session.id, t_ns=i * 1_000_000_000 // SR, pcm=pcm[i : i + FRAME])
        for i in range(0, len(pcm), FRAME)
    ]


async def test_the_stage_in_a_graph_opens_a_turn_per_utterance_with_speech_end_and_endpoint_marks(
    vad_model: SileroVadModel, eval_dir: Path
) -> None:
    pcm = read_wav(eval_dir / "conversations" / "dev_conv02_pause_ladder_noisefloor.wav")[0]
    expected = detect(vad_model, pcm)
    clock = ManualClock()
    session = Session(clock=clock)
    stage = PacedVad(session, clock, vad_model)
    async with Graph(session, [stage, NoWords(session)]) as graph:
        out = await replay(graph, audio_frames(session, pcm))

    assert not any(isinstance(f, AudioInput) for f in out)  # the VAD consumes the audio
    starts = [f for f in out if isinstance(f, SpeechStarted)]
    ends = [f for f in out if isinstance(f, SpeechEnded)]
    assert [type(f) for f in out] == [SpeechStarted, SpeechEnded] * len(expected)
    assert [f.turn_id for f in starts] == [f.turn_id for f in ends] == list(range(1, len(expected) + 1))
    assert [f.audio_offset_s for f in starts] == [e.speech_start / SR for e in expected]
    assert all(np.array_equal(f.audio, e.audio) for f, e in zip(ends, expected, strict=True))

    hangover_ns = SETTINGS.hangover_ms * 1_000_000
    for end, marks in zip(ends, stage.marks, strict=True):
        assert marks["speech_end"] == end.speech_end_ns
        assert marks["endpoint"] == end.t_ns
        delay = marks["endpoint"] - marks["speech_end"]
        # whole 32 ms windows of silence, decided when the frame completing the last one arrives
        assert hangover_ns <= delay < hangover_ns + (WINDOW + FRAME) * 1_000_000_000 // SR, delay
    assert ends[0].speech_end_ns == expected[0].speech_end * 1_000_000_000 // SR


async def test_speech_while_the_assistant_speaks_interrupts_it_before_the_turn_opens(
    vad_model: SileroVadModel, eval_dir: Path
) -> None:
    pcm = read_wav(eval_dir / "audio" / "ljspeech_LJ001-0008.wav")[0]
    session = Session()
    session.state = State.SPEAKING
    epochs: list[int] = []

    async def on_interrupt(epoch: int, reason: str) -> None:
        epochs.append(epoch)

    session.on_interrupt(on_interrupt)
    stage = VadStage(session, SETTINGS, vad_model)
    out = []
    half = audio_frames(session, pcm[: len(pcm) // 2])  # cut mid-sentence: the input ends
    for frame in [*half, EndOfInput(session_id=session.id)]:
        out.extend([f async for f in stage.process(frame)])

    started, ended = out
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert epochs == [1] and session.interrupts == 1
    assert (started.epoch, started.turn_id) == (1, 1)
    assert session.state is State.THINKING  # the new utterance is being answered
    assert ended.turn_id == 1 and len(ended.audio) > 0.5 * len(pcm) - SETTINGS.preroll_ms * 16
    assert set(session.trace.marks) == {"speech_end", "endpoint"}


async def test_a_frame_is_scored_on_the_loop_and_a_burst_of_late_audio_on_the_worker(
    vad_model: SileroVadModel, eval_dir: Path
) -> None:
    """A window costs about what a hop to a thread and back does, so a live 20 ms frame is scored
    where it arrives; a second of audio at once (a client catching up) would hold the loop for
    ~6 ms, so it goes to the model's worker."""
    pcm = read_wav(eval_dir / "audio" / "psphinx_goforward.wav")[0]
    scored_on: list[int] = []
    real = vad_model.infer

    def recorded(window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        scored_on.append(threading.get_ident())
        return real(window, state)

    session = Session()
    stage = VadStage(session, SETTINGS, vad_model)
    vad_model.infer = recorded  # type: ignore[method-assign]
    try:
        for frame in audio_frames(session, pcm[: 50 * FRAME]):  # one second, frame by frame
            [_ async for _ in stage.process(frame)]
        live = len(scored_on)
        burst = AudioInput(session_id=session.id, t_ns=0, pcm=pcm[50 * FRAME : 100 * FRAME])
        [_ async for _ in stage.process(burst)]
    finally:
        del vad_model.infer
    assert live == 50 * FRAME // WINDOW and set(scored_on[:live]) == {threading.get_ident()}
    assert len(scored_on) - live == 50 * FRAME // WINDOW and threading.get_ident() not in scored_on[live:]
