"""The Piper voice and the TTS stage with real models: intelligible speech, fixed frames at the
output rate, and synthesis that stops when the reply is interrupted or its consumer cancelled."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.audio import resample
from voxloop.pipeline.config import SttSettings, TtsSettings
from voxloop.pipeline.errors import AssetError
from voxloop.pipeline.frames import PCM16, AudioOutput, Frame, Interrupt, ReplyChunk, ReplyDone
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session
from voxloop.pipeline.workers import ModelWorker
from voxloop.stages.stt import SAMPLE_RATE, WhisperEngine, load_whisper
from voxloop.stages.tts import TtsStage
from voxloop.stages.tts.piper import PiperEngine, load_piper

pytestmark = pytest.mark.integration

SETTINGS = TtsSettings(frame_ms=40)
OUT_RATE = 24000
FRAME = 960  # 40 ms at 24 kHz
SENTENCES = [
    "The weather today is sunny with a light breeze from the west.",
    "Would you like me to play some music while you cook dinner?",
    "Your package should arrive on Friday afternoon.",
    "Remember to water the plants before you leave.",
]
LONG_REPLY = " ".join(f"This is sentence {n} of a long story that goes on and on." for n in "abcdefghijklmnopqrst")


@pytest.fixture(scope="module")
def piper(asset_store: AssetStore) -> Iterator[PiperEngine]:
    engine = load_piper(SETTINGS, asset_store)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def whisper(asset_store: AssetStore) -> Iterator[WhisperEngine]:
    engine = load_whisper(SttSettings(model="whisper-tiny.en", threads=2), asset_store)
    yield engine
    engine.close()


class Recorder:
    """A TtsEngine that speaks with Piper and records what it produced and when it stopped."""

    def __init__(self, engine: PiperEngine) -> None:
        self.engine = engine
        self.sample_rate = engine.sample_rate
        self.worker: ModelWorker = engine.worker
        self.blocks: dict[str, list[PCM16]] = defaultdict(list)
        self.stopped = threading.Event()  # the synthesis generator finished or was closed

    def synthesize(self, text: str) -> Iterator[PCM16]:
        try:
            for block in self.engine.synthesize(text):
                self.blocks[text].append(block)
                yield block
        finally:
            self.stopped.set()


def words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):  # a hang guard, not a timing assertion
        while not condition():
            await asyncio.sleep(0.01)


def stray_tasks() -> list[asyncio.Task[object]]:
    """Tasks still running other than this test and the graph's own stage runners."""
    current = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t is not current and not t.done() and not t.get_name().startswith("voxloop-stage-")
    ]


def test_piper_speech_is_understood_by_whisper(piper: PiperEngine, whisper: WhisperEngine) -> None:
    text = " ".join(SENTENCES)
    blocks = list(piper.synthesize(text))
    assert len(blocks) == len(SENTENCES)  # one block per sentence, each as soon as it is ready
    assert all(b.dtype == np.int16 and len(b) > 0.5 * piper.sample_rate for b in blocks)

    def understood(blocks: list[np.ndarray]) -> bool:
        heard = whisper.transcribe(resample(np.concatenate(blocks), piper.sample_rate, SAMPLE_RATE))
        wer = jiwer.wer(words(text), words(heard.text))
        print(f"\npiper joe -> whisper tiny.en: WER {wer:.3f} ({sum(map(len, blocks)) / piper.sample_rate:.1f} s)")
        return heard.accepted and wer < 0.10

    # Piper samples its prosody, so takes differ: over 60 takes the mean WER was 0.009, and one take
    # reached 0.103 ("But whether today ..."). A fresh second take tells an unlucky sample from a regression.
    assert understood(blocks) or understood(list(piper.synthesize(text)))


async def test_stage_streams_fixed_frames_of_each_chunk_in_order(piper: PiperEngine) -> None:
    recorder = Recorder(piper)
    session = Session()
    await session.user_started_speaking()
    chunks = [
        "Hello there, nice to meet you.",
        "The first part is short. The second part is a little longer.",
    ]

    out: list[Frame] = []
    async with Graph(session, [TtsStage(session, SETTINGS, recorder, OUT_RATE)]) as graph:
        for index, text in enumerate(chunks):
            await graph.push(session.make(ReplyChunk, text=text, index=index))
        await graph.push(session.make(ReplyDone, text=" ".join(chunks)))
        while not out or not isinstance(out[-1], ReplyDone):
            out.append(await asyncio.wait_for(graph.output.get(), timeout=30))

    audio = [f for f in out if isinstance(f, AudioOutput)]
    assert len(audio) == len(out) - 1  # ReplyDone came last, after all the audio
    assert all(len(f.pcm) == FRAME and f.sample_rate == OUT_RATE and f.pcm.dtype == np.int16 for f in audio)
    assert all(f.turn_id == session.turn_id and f.session_id == session.id for f in audio)
    assert [f.chunk_index for f in audio] == sorted(f.chunk_index for f in audio)
    for index, text in enumerate(chunks):
        frames = [f for f in audio if f.chunk_index == index]
        assert all(f.chunk_text == text for f in frames)
        synthesized = len(resample(np.concatenate(recorder.blocks[text]), piper.sample_rate, OUT_RATE))
        # The chunk's whole synthesis went out; only its last frame is padded with silence.
        assert len(frames) == -(-synthesized // FRAME)
        assert sum(f.duration_s for f in frames) == pytest.approx(synthesized / OUT_RATE, abs=FRAME / OUT_RATE)
    assert "tts_first_audio" in session.trace.marks


async def test_interrupt_stops_synthesis_and_old_audio(piper: PiperEngine) -> None:
    recorder = Recorder(piper)
    session = Session()
    await session.user_started_speaking()
    session.user_said("Tell me a long story.")
    total = LONG_REPLY.count(".")

    async with Graph(session, [TtsStage(session, SETTINGS, recorder, OUT_RATE)]) as graph:
        await graph.push(session.make(ReplyChunk, text=LONG_REPLY, index=0))
        first = await asyncio.wait_for(graph.output.get(), timeout=30)
        assert isinstance(first, AudioOutput) and first.epoch == 0

        await session.interrupt("barge_in")
        await until(recorder.stopped.is_set)
        spoken = len(recorder.blocks[LONG_REPLY])
        print(f"\ninterrupted after {spoken} of {total} sentences")
        assert spoken < total / 2, f"synthesis ran on for {spoken} of {total} sentences"
        assert not stray_tasks()

        # Nothing of the interrupted reply comes out any more; the stage serves the next one.
        await graph.push(session.make(ReplyChunk, text="Okay.", index=0))
        await graph.push(session.make(ReplyDone, text="Okay."))
        after: list[Frame] = []
        while not after or not isinstance(after[-1], ReplyDone):
            after.append(await asyncio.wait_for(graph.output.get(), timeout=30))

    assert isinstance(after[0], Interrupt)
    assert all(f.epoch == 1 for f in after[1:])
    assert next(f.chunk_text for f in after if isinstance(f, AudioOutput)) == "Okay."
    assert len(recorder.blocks[LONG_REPLY]) == spoken  # and it did not start again


async def test_cancelling_the_consumer_stops_synthesis(piper: PiperEngine) -> None:
    recorder = Recorder(piper)
    session = Session()
    stage = TtsStage(session, SETTINGS, recorder, OUT_RATE)
    heard_first = asyncio.Event()

    async def consume() -> None:
        async for _ in stage.process(session.make(ReplyChunk, text=LONG_REPLY, index=0)):
            heard_first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(heard_first.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(recorder.stopped.is_set)
    assert len(recorder.blocks[LONG_REPLY]) < LONG_REPLY.count(".") / 2
    assert not stray_tasks()


def test_voice_by_path_and_loading_errors(asset_store: AssetStore, tmp_path: Path) -> None:
    source = asset_store.path("piper-en_US-joe-medium")
    by_path = load_piper(TtsSettings(voice=str(source / "en_US-joe-medium.onnx")), asset_store)
    assert by_path.sample_rate == 22050
    by_path.close()

    with pytest.raises(AssetError, match="no such file"):
        load_piper(TtsSettings(voice=str(tmp_path / "absent.onnx")), asset_store)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model" * 100)
    with pytest.raises(AssetError, match=r"no config beside it: put broken\.onnx\.json"):
        load_piper(TtsSettings(voice=str(broken)), asset_store)
    shutil.copy(source / "en_US-joe-medium.onnx.json", tmp_path / "broken.onnx.json")
    with pytest.raises(AssetError, match="may be damaged"):
        load_piper(TtsSettings(voice=str(broken)), asset_store)
