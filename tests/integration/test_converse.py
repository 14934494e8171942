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

    # Every mark up to the first audio leaving is set, in causal order.
    marks = turn.trace.marks
    expected = [m for m in TURN_MARKS if m != "playback_start"]
    assert [m for m in marks if m in TURN_MARKS] == expected
    times = [marks[m] for m in expected]
    assert times == sorted(times)
    # Speculative work is marked off the main line: the pause came before the end was decided.
    assert marks["speech_end"] < marks["speech_pause"] < marks["stt_speculative"] <= marks["stt_final"]
    # The endpoint is decided one silence hangover after the true end of speech: the eager one when
    # the early transcript read as a finished sentence.
    vad = engines.settings.vad
    hangover = vad.eager_hangover_ms if turn.trace.notes["endpoint"] == "eager" else vad.hangover_ms
    assert hangover - 100 < turn.trace.ms("speech_end", "endpoint") < hangover + 250  # type: ignore[operator]


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
