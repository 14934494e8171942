"""Google Cloud Text-to-Speech v1: POST /v1/text:synthesize → JSON {"audioContent": base64}.

Not streamed: the whole utterance arrives at once, LINEAR16 with a WAV header. The key goes in
the `X-Goog-Api-Key` header (never the URL). The voice's `model` is a Google voice name
(en-US-Neural2-F); its language code comes from that name, else from the voice's language.
Voice settings: `speaking_rate`, `pitch`, `volume_gain_db`, `language_code`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from voxloop.pipeline.config import GoogleTtsSettings
from voxloop.pipeline.errors import TransientError
from voxloop.stages.tts.cloud import api_key, check_settings, http_client, send
from voxloop.stages.tts.cloud.audio import WavReader
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec

AUDIO_KEYS = {"speaking_rate": "speakingRate", "pitch": "pitch", "volume_gain_db": "volumeGainDb"}
SETTING_KEYS = (*AUDIO_KEYS, "language_code")


class GoogleSpeech:
    name: ProviderName = "google"

    def __init__(
        self, settings: GoogleTtsSettings, key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings, self._key = settings, key
        self.client = http_client(settings, transport)

    def body(self, text: str, voice: VoiceSpec) -> dict[str, Any]:
        check_settings(self.name, voice, SETTING_KEYS)
        audio: dict[str, Any] = {"audioEncoding": "LINEAR16", "sampleRateHertz": self.settings.sample_rate}
        audio |= {wire: voice.settings[key] for key, wire in AUDIO_KEYS.items() if key in voice.settings}
        selection: dict[str, Any] = {"languageCode": voice.settings.get("language_code") or language_code(voice)}
        if voice.model:
            selection["name"] = voice.model
        return {"input": {"text": text}, "voice": selection, "audioConfig": audio}

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        headers = {"X-Goog-Api-Key": self._key} if self._key else {}
        request = self.client.build_request("POST", "/v1/text:synthesize", json=self.body(text, voice), headers=headers)
        response = await send(self.name, self.client, request, self.settings.api_key_env, stream=False)
        wav = WavReader(f"{self.name} speech")
        try:
            content = base64.b64decode(response.json()["audioContent"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise TransientError("google speech answered without a base64 audioContent") from None
        samples = wav.push(content)
        if len(samples) and wav.sample_rate:
            yield PcmBlock(samples, wav.sample_rate)

    async def aclose(self) -> None:
        await self.client.aclose()


def language_code(voice: VoiceSpec) -> str:
    """en-US-Neural2-F → en-US; otherwise the voice's language (a bare "en" becomes en-US)."""
    if voice.model and voice.model.count("-") >= 2:
        return "-".join(voice.model.split("-")[:2])
    return "en-US" if voice.language == "en" else voice.language


async def load_google(settings: GoogleTtsSettings, transport: httpx.AsyncBaseTransport | None = None) -> GoogleSpeech:
    return GoogleSpeech(settings, api_key(settings, "google"), transport)
