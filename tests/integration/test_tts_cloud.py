"""The cloud speech providers against local servers that speak each API's wire format: the
request each sends (path, auth header, body), the audio each decodes (sample-exact), streaming,
errors mapped to the router's types without the key, and a cancel that drops the connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import read_wav
from tests.integration.servers import free_port
from tests.integration.speech_servers import SpeechServer, serve
from voxloop.pipeline.config import ElevenLabsTtsSettings, GoogleTtsSettings, OpenAiTtsSettings
from voxloop.pipeline.errors import ConfigError, InputError, TransientError
from voxloop.pipeline.frames import PCM16
from voxloop.stages.tts.cloud.elevenlabs import load_elevenlabs
from voxloop.stages.tts.cloud.google import load_google
from voxloop.stages.tts.cloud.openai import load_openai
from voxloop.stages.tts.voice import PcmBlock, SpeechProvider, VoiceSpec

pytestmark = pytest.mark.integration

KEYS = {"openai": "sk-test-openai-5e3c", "elevenlabs": "xi-test-91ab", "google": "AIza-test-77f0"}
TEXT = "Ask not what your country can do for you."


@pytest.fixture(scope="module")
def speech_server(eval_dir: Path) -> Iterator[SpeechServer]:
    speech = read_wav(eval_dir / "audio" / "librivox_ss01_0880.wav")  # 3 s of real speech
    yield from serve(SpeechServer(speech, KEYS), free_port())


@pytest.fixture(autouse=True)
def api_keys(monkeypatch: pytest.MonkeyPatch, speech_server: SpeechServer) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", KEYS["openai"])
    monkeypatch.setenv("TEST_ELEVEN_KEY", KEYS["elevenlabs"])
    monkeypatch.setenv("TEST_GOOGLE_KEY", KEYS["google"])
    speech_server.seen.clear()
    speech_server.disconnected.clear()


def openai_settings(server: SpeechServer, **changes: object) -> OpenAiTtsSettings:
    base = {"base_url": f"{server.url}/v1", "api_key_env": "TEST_OPENAI_KEY", "model": "tts-1"}
    return OpenAiTtsSettings.model_validate(base | changes)


def eleven_settings(server: SpeechServer, **changes: object) -> ElevenLabsTtsSettings:
    base = {"base_url": server.url, "api_key_env": "TEST_ELEVEN_KEY", "output_format": "pcm_16000"}
    return ElevenLabsTtsSettings.model_validate(base | changes)


def google_settings(server: SpeechServer, **changes: object) -> GoogleTtsSettings:
    base = {"base_url": server.url, "api_key_env": "TEST_GOOGLE_KEY", "sample_rate": 22050}
    return GoogleTtsSettings.model_validate(base | changes)


async def collect(provider: SpeechProvider, voice: VoiceSpec, text: str = TEXT) -> list[PcmBlock]:
    try:
        return [block async for block in provider.stream(text, voice)]
    finally:
        await provider.aclose()


def joined(blocks: list[PcmBlock]) -> PCM16:
    return np.concatenate([b.pcm for b in blocks])


@pytest.mark.parametrize("response_format", ["pcm", "wav"])
async def test_openai_speech_streams_pcm_and_wav(speech_server: SpeechServer, response_format: str) -> None:
    provider = await load_openai(openai_settings(speech_server, response_format=response_format))
    voice = VoiceSpec("nova", "openai", model="nova", settings={"speed": 1.25, "instructions": "Cheerful."})
    blocks = await collect(provider, voice)
    assert len(blocks) > 10  # arrived piece by piece, not as one body
    assert {b.sample_rate for b in blocks} == {24000}
    assert np.array_equal(joined(blocks), speech_server.at(24000))  # sample-exact across odd byte splits

    seen = speech_server.seen[-1]
    assert seen.path == "/v1/audio/speech"
    assert seen.headers["authorization"] == f"Bearer {KEYS['openai']}"
    assert seen.body == {
        "model": "tts-1",
        "input": TEXT,
        "voice": "nova",
        "response_format": response_format,
        "speed": 1.25,
        "instructions": "Cheerful.",
    }


async def test_elevenlabs_streams_pcm_at_the_output_formats_rate(speech_server: SpeechServer) -> None:
    provider = await load_elevenlabs(eleven_settings(speech_server))
    voice = VoiceSpec("rachel", "elevenlabs", model="21m00Tcm4TlvDq8ikWAM", settings={"stability": 0.4, "speed": 1.1})
    blocks = await collect(provider, voice)
    assert len(blocks) > 10 and {b.sample_rate for b in blocks} == {16000}
    assert np.array_equal(joined(blocks), speech_server.speech)

    seen = speech_server.seen[-1]
    assert seen.path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"
    assert seen.query == {"output_format": "pcm_16000"}
    assert seen.headers["xi-api-key"] == KEYS["elevenlabs"] and "authorization" not in seen.headers
    assert seen.body == {
        "text": TEXT,
        "model_id": "eleven_flash_v2_5",
        "voice_settings": {"stability": 0.4, "speed": 1.1},
    }


async def test_google_decodes_base64_linear16_with_its_wav_header(speech_server: SpeechServer) -> None:
    provider = await load_google(google_settings(speech_server))
    voice = VoiceSpec("wavenet", "google", model="en-GB-Wavenet-B", settings={"speaking_rate": 0.9, "pitch": -2.0})
    blocks = await collect(provider, voice)
    assert [b.sample_rate for b in blocks] == [22050]
    assert np.array_equal(joined(blocks), speech_server.at(22050))

    seen = speech_server.seen[-1]
    assert seen.path == "/v1/text:synthesize" and seen.query == {}  # the key is never in the URL
    assert seen.headers["x-goog-api-key"] == KEYS["google"]
    assert seen.body == {
        "input": {"text": TEXT},
        "voice": {"languageCode": "en-GB", "name": "en-GB-Wavenet-B"},
        "audioConfig": {"audioEncoding": "LINEAR16", "sampleRateHertz": 22050, "speakingRate": 0.9, "pitch": -2.0},
    }


async def test_a_provider_without_its_key_is_off(monkeypatch: pytest.MonkeyPatch, speech_server: SpeechServer) -> None:
    monkeypatch.delenv("TEST_OPENAI_KEY")
    with pytest.raises(ConfigError, match=r"openai speech provider is off: put its API key in \$TEST_OPENAI_KEY"):
        await load_openai(openai_settings(speech_server))
    local = await load_openai(openai_settings(speech_server, enabled=True))  # a keyless local server
    with pytest.raises(ConfigError, match=r"refused the API key \(401\): put a valid key in \$TEST_OPENAI_KEY"):
        await collect(local, VoiceSpec("v", "openai"))


async def test_errors_name_the_problem_but_never_the_key(
    monkeypatch: pytest.MonkeyPatch, speech_server: SpeechServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_ELEVEN_KEY", "xi-wrong-key-0000")
    messages: list[str] = []
    with pytest.raises(ConfigError, match="refused the API key") as refused:
        await collect(await load_elevenlabs(eleven_settings(speech_server)), VoiceSpec("v", "elevenlabs", model="abc"))
    messages.append(str(refused.value))
    with pytest.raises(TransientError, match=r"answered 500: .*internal error") as broken:
        await collect(await load_google(google_settings(speech_server)), VoiceSpec("v", "google", model="broken"))
    messages.append(str(broken.value))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(
        TransientError, match=r"openai at http://127\.0\.0\.1:\d+/v1/audio/speech is unreachable"
    ) as gone:
        await collect(await load_openai(openai_settings(speech_server, base_url=dead)), VoiceSpec("v", "openai"))
    messages.append(str(gone.value))
    with pytest.raises(InputError, match=r"unknown elevenlabs settings \['pitch'\]"):
        await collect(
            await load_elevenlabs(eleven_settings(speech_server)),
            VoiceSpec("v", "elevenlabs", model="a", settings={"pitch": 1}),
        )
    for secret in (*KEYS.values(), "xi-wrong-key-0000"):
        assert all(secret not in message for message in messages)
        assert secret not in caplog.text


async def test_a_silent_server_times_out_as_transient(speech_server: SpeechServer) -> None:
    provider = await load_openai(openai_settings(speech_server, read_timeout_s=0.5))
    with pytest.raises(TransientError, match="timed out"):
        await collect(provider, VoiceSpec("v", "openai", model="hang"))


async def test_closing_the_stream_drops_the_connection(speech_server: SpeechServer) -> None:
    speech_server.speech = np.tile(speech_server.speech, 20)  # a minute: far more than one read
    try:
        provider = await load_elevenlabs(eleven_settings(speech_server))
        blocks = provider.stream(TEXT, VoiceSpec("v", "elevenlabs", model="abc"))
        assert isinstance(blocks, AsyncGenerator)
        first = await anext(blocks)
        assert len(first.pcm) > 0
        await blocks.aclose()
        await provider.aclose()
        async with asyncio.timeout(10):  # a hang guard, not a timing assertion
            while not speech_server.disconnected.is_set():
                await asyncio.sleep(0.02)
    finally:
        speech_server.speech = speech_server.speech[: len(speech_server.speech) // 20]
