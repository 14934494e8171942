"""Whole turns through the real graph: real models, real recordings, real-time pace."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jiwer
import numpy as np
import pytest

from voxloop.commands.converse import converse
from voxloop.engine import Engines
from voxloop.pipeline.audio import read_wav, resample
from voxloop.pipeline.config import Settings, load_settings
from voxloop.pipeline.trace import TURN_MARKS

pytestmark = pytest.mark.integration

CLIP = "audio/librivox_ss01_0930.wav"  # "he might even have been made amiable himself" (3.3 s)
PAUSED_CLIP = "audio/ljspeech_LJ001-0001.wav"  # "Printing, in the only sense ..., differs from ... the Exhibition"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env={})


@pytest.fixture(scope="module")
def engines(settings: Settings, asset_store: object) -> Iterator[Engines]:
    loaded = asyncio.run(Engines.load(settings, asset_store))  # type: ignore[arg-type]
    yield loaded
    asyncio.run(loaded.close())


def words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


async def test_a_spoken_question_gets_a_spoken_answer(eval_dir: Path, engines: Engines) -> None:
    pcm, rate = read_wav(eval_dir / CLIP)
    assert rate == 16000
    result = await converse(pcm, engines.settings, realtime=True, engines=engines)

    assert result.errors == []
    assert len(result.turns) == 1
    turn = result.turns[0]
    assert jiwer.wer("he might even have been made amiable himself", words(turn.user)) < 0.25
    assert len(turn.assistant.split()) >= 2

    # The reply audio is speech that says the reply: transcribe it back.
    reply = result.reply_pcm
    assert len(reply) / result.sample_rate > 0.5
    heard = engines.stt.transcribe(resample(reply, result.sample_rate, 16000)).text
    assert jiwer.wer(words(turn.assistant), words(heard)) < 0.5

    # Every mark up to the first audio leaving is set, in causal order along both lines: the user's
    # (end of speech, endpoint, final transcript) and the reply's. The reply was most likely prepared
    # on the early transcript during the hangover and held until the endpoint (a speculative reply);
    # if the early transcript came too late for that (a busy machine), it follows the final one.
    marks = turn.trace.marks
    assert set(TURN_MARKS) - set(marks) == {"playback_start"}
    user_line = ["speech_end", "endpoint", "stt_final", "first_audio_sent"]
    reply_line = ["stt_speculative", "llm_first_token", "first_chunk", "tts_first_audio", "first_audio_sent"]
    if turn.trace.notes.get("reply") != "speculative":
        reply_line[0] = "stt_final"
    for line in (user_line, reply_line):
        assert [marks[m] for m in line] == sorted(marks[m] for m in line), line
    assert sum(turn.trace.spans_ms().values()) == pytest.approx(turn.trace.voice_to_voice_ms)
    # Speculative work is marked off the main line: the pause came before the end was decided.
    assert marks["speech_end"] < marks["speech_pause"] < marks["stt_speculative"] <= marks["stt_final"]
    # The endpoint is decided one silence hangover after the true end of speech: the eager one when
    # the early transcript read as a finished sentence.
    vad = engines.settings.vad
    hangover = vad.eager_hangover_ms if turn.trace.notes["endpoint"] == "eager" else vad.hangover_ms
    assert hangover - 100 < turn.trace.ms("speech_end", "endpoint") < hangover + 250  # type: ignore[operator]


async def test_a_pause_inside_a_sentence_is_not_answered(eval_dir: Path, engines: Engines) -> None:
    """Each pause inside the sentence starts a speculative reply; the talk goes on, so each is
    dropped unheard, and the one reply answers the whole sentence after its real end. (The eager
    end is off here: Whisper puts a full stop at this clip's first comma.)"""
    pcm, _ = read_wav(eval_dir / PAUSED_CLIP)
    settings = engines.settings
    engines.settings = settings.model_copy(update={"vad": settings.vad.model_copy(update={"eager_hangover_ms": 0})})
    try:
        result = await converse(pcm, engines.settings, realtime=True, engines=engines)
    finally:
        engines.settings = settings
    assert result.errors == []
    assert len(result.turns) == 1
    turn = result.turns[0]
    assert turn.trace.notes.get("speculations_dropped", 0) >= 1, turn.trace.notes
    assert "exhibition" in words(turn.user)  # the words after the pauses are in the question
    marks = turn.trace.marks
    assert marks["first_audio_sent"] > marks["endpoint"]  # nothing was heard before the turn ended
    assert len(result.reply_pcm) / result.sample_rate > 0.5


async def test_two_turns_share_one_history(eval_dir: Path, engines: Engines) -> None:
    first, _ = read_wav(eval_dir / CLIP)
    second, _ = read_wav(eval_dir / "audio/psphinx_goforward.wav")
    gap = np.zeros(int(16000 * 2.5), np.int16)  # long enough for the first reply to finish
    result = await converse(np.concatenate([first, gap, second]), engines.settings, engines=engines)
    assert len(result.turns) == 2
    assert "forward" in words(result.turns[1].user)
    assert [t.trace.turn_id for t in result.turns] == [1, 2]


async def test_silence_and_noise_start_no_turn(eval_dir: Path, engines: Engines) -> None:
    noise, _ = read_wav(eval_dir / "audio/gen_white_noise_5s.wav")
    result = await converse(noise, engines.settings, realtime=False, engines=engines)
    assert result.turns == []
    assert result.errors == []


def test_the_cli_speaks_a_reply_file(eval_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "voxloop", "converse", "--in", str(eval_dir / CLIP), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "you:" in proc.stdout
    assert "assistant:" in proc.stdout
    assert "voice-to-voice" in proc.stdout
    pcm, rate = read_wav(out)
    assert len(pcm) / rate > 0.5


def test_the_cli_explains_a_missing_input_file(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "voxloop", "converse", "--in", str(tmp_path / "nope.wav")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope.wav" in proc.stderr
