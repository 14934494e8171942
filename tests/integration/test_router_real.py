"""The voice router in a real `voxloop serve` whose configured voices cannot speak: a cloud voice
pointing at a dead port and an XTTS voice whose checkpoint is missing. Turns still speak (via
Piper), /healthz says degraded and names the providers, the trace and /metrics say who spoke.
Also: two Piper voices from one .onnx with different length_scale, loaded once."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.servers import ServerProcess, free_port, running_server
from voxloop.client import RealtimeClient, silence
from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.audio import decode_audio
from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.workers import Priority, work_priority
from voxloop.stages.tts.piper import PiperProvider
from voxloop.stages.tts.voice import VoiceSpec

pytestmark = pytest.mark.integration

TURN_S = 40.0  # a bound on one spoken turn on a busy 2-core machine, not a timing assertion
SLOW = 1.6  # slow-joe's length_scale
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it takes a long nap in the sun."
VOICES = [
    {"name": "cloud", "provider": "openai", "model": "alloy", "fallback": ["slow-joe"]},
    {"name": "clone", "provider": "xtts", "reference": "/nonexistent/reference.wav"},
    {"name": "slow-joe", "provider": "piper", "model": "en_US-joe-medium", "settings": {"length_scale": SLOW}},
]


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    dead_port = free_port()  # nothing listens here
    env = {
        "VOXLOOP_TTS__VOICES": json.dumps(VOICES),
        "VOXLOOP_TTS__DEFAULT_VOICE": "cloud",
        "VOXLOOP_TTS__OPENAI__ENABLED": "true",
        "VOXLOOP_TTS__OPENAI__BASE_URL": f"http://127.0.0.1:{dead_port}/v1",
        "VOXLOOP_TTS__XTTS": json.dumps({"checkpoint_dir": "/nonexistent/xtts-v2"}),
        "VOXLOOP_TTS__ROUTER__BACKOFF_INITIAL_S": "600",  # stays unhealthy for the whole module
    }
    with running_server(tmp_path_factory.mktemp("degraded") / "server.log", env) as process:
        yield process


def wav(response: httpx.Response) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(response.content), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def synthesize(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/synthesize", json=body, timeout=120)


async def test_a_realtime_turn_still_speaks_and_the_trace_names_piper(degraded: ServerProcess, eval_dir: Path) -> None:
    pcm = decode_audio(eval_dir / "audio" / "librivox_ss01_0930.wav", rate=24000)
    async with await RealtimeClient.connect(degraded.ws_url) as client:
        created = await client.wait_for("session.created", within=10)
        assert created["session"]["audio"]["output"]["voice"] == "cloud"
        await client.stream(np.concatenate([silence(0.3, 24000), pcm, silence(1.5, 24000)]), rate=24000)
        done, trace = await client.wait_turn(within=TURN_S)
    reply = client.reply_audio(done["response"]["id"])
    assert len(reply) > 0.5 * 24000  # the turn did not go silent
    notes = trace["trace"]["notes"]
    assert (notes["tts_voice"], notes["tts_provider"], notes["tts_fallback"]) == ("slow-joe", "piper", True)
    assert "tts provider failed" in degraded.log()


def test_healthz_is_degraded_and_names_each_failed_provider(degraded: ServerProcess) -> None:
    synthesize(degraded, {"text": "Hello."})  # the default voice (cloud) is asked at least once
    health = httpx.get(f"{degraded.url}/healthz", timeout=10).json()
    assert health["status"] == "degraded"
    tts = health["stages"]["tts"]
    assert tts["ready"] is True and tts["voice"] == "cloud"
    providers = {p["name"]: p for p in tts["providers"]}
    assert providers["openai"]["state"] == "unhealthy" and "unreachable" in providers["openai"]["reason"]
    assert providers["xtts"]["state"] == "unhealthy" and "failed to load" in providers["xtts"]["reason"]
    assert providers["piper"]["state"] == "ready" and providers["piper"]["first_audio_ema_ms"] > 0
    problems = [p for p in health["problems"] if p.startswith("tts: ")]
    assert any("the openai provider" in p and "fall back" in p for p in problems)
    assert any("the xtts provider" in p for p in problems)
    assert tts["last_spoke"] == {"voice": "slow-joe", "provider": "piper", "fallback": True}


def test_every_voice_speaks_through_its_chain_and_speed_is_per_voice(degraded: ServerProcess) -> None:
    durations = {}
    for voice in ("en_US-joe-medium", "slow-joe", "clone", "cloud"):
        response = synthesize(degraded, {"text": SENTENCE, "voice": voice})
        assert response.status_code == 200, response.text
        pcm, rate = wav(response)
        assert rate == 22050
        durations[voice] = len(pcm) / rate
    print(f"\ndurations: {durations}")
    ratio = durations["slow-joe"] / durations["en_US-joe-medium"]
    assert 1.3 < ratio < 1.9  # length_scale 1.6, less the fixed pauses
    assert durations["clone"] == pytest.approx(durations["en_US-joe-medium"], rel=0.15)  # xtts → the built-in joe
    assert durations["cloud"] == pytest.approx(durations["slow-joe"], rel=0.15)  # openai → its fallback slow-joe


def test_metrics_count_the_failures_and_who_spoke(degraded: ServerProcess) -> None:
    synthesize(degraded, {"text": "Hello.", "voice": "cloud"})
    text = httpx.get(f"{degraded.url}/metrics", timeout=10).text
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("voxloop_tts")
    }
    assert lines['voxloop_tts_failures_total{kind="load",provider="xtts"}'] >= 1
    assert lines['voxloop_tts_requests_total{provider="piper"}'] >= 1
    assert lines['voxloop_tts_first_audio_seconds_count{provider="piper"}'] >= 1
    assert lines['voxloop_tts_provider_healthy{provider="openai"}'] == 0
    assert lines['voxloop_tts_provider_healthy{provider="piper"}'] == 1


def test_an_unknown_voice_is_a_404_naming_the_voices(degraded: ServerProcess) -> None:
    response = synthesize(degraded, {"text": "Hello.", "voice": "darth"})
    assert response.status_code == 404
    assert "unknown voice 'darth'" in response.json()["detail"] and "slow-joe" in response.json()["detail"]


# --- PiperProvider directly ------------------------------------------------------------------


async def test_two_voices_share_one_model_with_their_own_speed(asset_store: AssetStore) -> None:
    provider = PiperProvider(TtsSettings(), asset_store)
    normal = VoiceSpec("joe", "piper", model="en_US-joe-medium")
    slow = VoiceSpec("slow-joe", "piper", model="en_US-joe-medium", settings={"length_scale": SLOW})
    try:
        heard = {}
        for voice in (normal, slow):
            blocks = [block async for block in provider.stream(SENTENCE, voice)]
            assert {b.sample_rate for b in blocks} == {22050}
            heard[voice.name] = sum(len(b.pcm) for b in blocks) / 22050
        assert 1.3 < heard["slow-joe"] / heard["joe"] < 1.9
        assert len(provider._voices) == 1  # one .onnx, loaded once, for both voices
    finally:
        await provider.aclose()


async def test_a_live_sentence_is_spoken_beside_a_background_reply_word_for_word(asset_store: AssetStore) -> None:
    """A reply's later sentences (AHEAD) run on the provider's background thread, beside another
    session's first clause (LIVE) on the live one (tests/unit/test_workers.py proves the threads):
    one ONNX session and espeak-ng (not thread-safe, so locked) serve both, and each comes out
    sample for sample as it does alone."""
    provider = PiperProvider(TtsSettings(), asset_store)
    voice = VoiceSpec("still", "piper", settings={"noise_scale": 0, "noise_w": 0})  # no randomness
    story = " ".join(f"This is sentence {n} of a long story that goes on." for n in range(1, 9))
    clause = "Sure, here it is."

    async def speak(text: str, priority: Priority) -> tuple[np.ndarray, float]:
        with work_priority(priority):
            blocks = [block.pcm async for block in provider.stream(text, voice)]
        return np.concatenate(blocks), time.monotonic()

    try:
        alone = {text: (await speak(text, Priority.LIVE))[0] for text in (story, clause)}
        background = asyncio.create_task(speak(story, Priority.AHEAD))
        await asyncio.sleep(0.05)
        live, live_done = await speak(clause, Priority.LIVE)
        later, later_done = await background
        assert live_done < later_done  # the first clause did not wait for the eight sentences
        assert np.array_equal(live, alone[clause]) and np.array_equal(later, alone[story])
    finally:
        await provider.aclose()


async def test_piper_voice_settings_are_checked(asset_store: AssetStore) -> None:
    from voxloop.pipeline.errors import InputError

    provider = PiperProvider(TtsSettings(), asset_store)
    try:
        with pytest.raises(InputError, match=r"unknown Piper settings \['pitch'\]"):
            [b async for b in provider.stream("Hi.", VoiceSpec("v", "piper", settings={"pitch": 2}))]
        with pytest.raises(InputError, match="length_scale = -1 must be a positive number"):
            [b async for b in provider.stream("Hi.", VoiceSpec("v", "piper", settings={"length_scale": -1}))]
    finally:
        await provider.aclose()
