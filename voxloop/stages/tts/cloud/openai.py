"""OpenAI-compatible speech: POST {base_url}/audio/speech, the body streamed as it is synthesised.

Covers OpenAI itself and local servers that speak the same API. `response_format` pcm is raw
24 kHz PCM16 mono; wav carries its own rate (any server's). Voice settings: `model` (overrides
tts.openai.model), `speed`, `instructions`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx

from voxloop.pipeline.config import OpenAiTtsSettings
from voxloop.stages.tts.cloud import api_key, check_settings, http_client, request_error, send
from voxloop.stages.tts.cloud.audio import PcmReader, WavReader
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec

PCM_RATE = 24000
DEFAULT_VOICE = "alloy"
SETTING_KEYS = ("model", "speed", "instructions")


class OpenAiSpeech:
    name: ProviderName = "openai"

    def __init__(
        self, settings: OpenAiTtsSettings, key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings, self._key = settings, key
        self.client = http_client(settings, transport)

    def body(self, text: str, voice: VoiceSpec) -> dict[str, Any]:
        check_settings(self.name, voice, SETTING_KEYS)
        body: dict[str, Any] = {
            "model": voice.settings.get("model", self.settings.model),
            "input": text,
            "voice": voice.model or DEFAULT_VOICE,
            "response_format": self.settings.response_format,
        }
        body |= {key: voice.settings[key] for key in ("speed", "instructions") if key in voice.settings}
        return body

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        request = self.client.build_request("POST", "/audio/speech", json=self.body(text, voice), headers=headers)
        response = await send(self.name, self.client, request, self.settings.api_key_env, stream=True)
        try:
            wav = WavReader(f"{self.name} speech") if self.settings.response_format == "wav" else None
            pcm = PcmReader()
            try:
                async for data in response.aiter_bytes():
                    samples = wav.push(data) if wav else pcm.push(data)
                    if len(samples):
                        yield PcmBlock(samples, (wav.sample_rate or PCM_RATE) if wav else PCM_RATE)
            except httpx.HTTPError as exc:
                raise request_error(self.name, request.url, exc) from None
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


async def load_openai(settings: OpenAiTtsSettings, transport: httpx.AsyncBaseTransport | None = None) -> OpenAiSpeech:
    return OpenAiSpeech(settings, api_key(settings, "openai"), transport)
