"""ElevenLabs streaming speech: POST /v1/text-to-speech/{voice_id}/stream?output_format=pcm_<rate>.

The key goes in the `xi-api-key` header; the body streams raw PCM16 mono at the rate the
output format names. The voice's `model` is the ElevenLabs voice id. Voice settings:
`model_id` (overrides tts.elevenlabs.model) and the API's voice_settings (stability,
similarity_boost, style, use_speaker_boost, speed).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

import httpx

from voxloop.pipeline.config import ElevenLabsTtsSettings
from voxloop.pipeline.errors import InputError
from voxloop.stages.tts.cloud import api_key, check_settings, http_client, request_error, send
from voxloop.stages.tts.cloud.audio import PcmReader
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec

VOICE_SETTINGS = ("stability", "similarity_boost", "style", "use_speaker_boost", "speed")
SETTING_KEYS = ("model_id", *VOICE_SETTINGS)


class ElevenLabsSpeech:
    name: ProviderName = "elevenlabs"

    def __init__(
        self, settings: ElevenLabsTtsSettings, key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings, self._key = settings, key
        self.sample_rate = int(settings.output_format.removeprefix("pcm_"))
        self.client = http_client(settings, transport)

    def body(self, text: str, voice: VoiceSpec) -> dict[str, Any]:
        check_settings(self.name, voice, SETTING_KEYS)
        body: dict[str, Any] = {"text": text, "model_id": voice.settings.get("model_id", self.settings.model)}
        tuned = {key: voice.settings[key] for key in VOICE_SETTINGS if key in voice.settings}
        return body | ({"voice_settings": tuned} if tuned else {})

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        if not voice.model:
            raise InputError(f"voice {voice.name!r}: set its model to an ElevenLabs voice id")
        request = self.client.build_request(
            "POST",
            f"/v1/text-to-speech/{quote(voice.model, safe='')}/stream",
            params={"output_format": self.settings.output_format},
            json=self.body(text, voice),
            headers={"xi-api-key": self._key} if self._key else {},
        )
        response = await send(self.name, self.client, request, self.settings.api_key_env, stream=True)
        try:
            pcm = PcmReader()
            try:
                async for data in response.aiter_bytes():
                    samples = pcm.push(data)
                    if len(samples):
                        yield PcmBlock(samples, self.sample_rate)
            except httpx.HTTPError as exc:
                raise request_error(self.name, request.url, exc) from None
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


async def load_elevenlabs(
    settings: ElevenLabsTtsSettings, transport: httpx.AsyncBaseTransport | None = None
) -> ElevenLabsSpeech:
    return ElevenLabsSpeech(settings, api_key(settings, "elevenlabs"), transport)
