"""The provider table: which speech providers exist, how each loads, and the router over them.

    piper       always (the built-in voice tts.voice is the default and the last resort)
    openai      tts.openai      on with $OPENAI_API_KEY, or enabled: true
    elevenlabs  tts.elevenlabs  on with $ELEVENLABS_API_KEY, or enabled: true
    google      tts.google      on with $GOOGLE_API_KEY, or enabled: true
    xtts        tts.xtts        when configured; imported lazily (the [xtts] extra)

A provider that is off or fails to load is not an error at startup: the router marks it
unhealthy and its voices fall back. Only the built-in Piper voice must load.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from voxloop.pipeline.config import Settings, TtsSettings, VoiceSettings
from voxloop.pipeline.errors import ConfigError
from voxloop.stages.tts.cache import AudioCache
from voxloop.stages.tts.router import Loader, ProviderSlot, VoiceRouter
from voxloop.stages.tts.stats import ProviderHealth
from voxloop.stages.tts.voice import SpeechProvider, VoiceLookup, VoiceSpec

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore
    from voxloop.stages.tts.piper import PiperProvider

__all__ = ["ConfigVoices", "build_router", "builtin_voice"]


def builtin_voice(tts: TtsSettings) -> VoiceSpec:
    """The configured Piper voice (tts.voice), named as GET /api/voices shows it."""
    name = Path(tts.voice).name.removesuffix(".onnx").removeprefix("piper-")
    return VoiceSpec(name=name, provider="piper", model=tts.voice)


def voice_spec(voice: VoiceSettings) -> VoiceSpec:
    return VoiceSpec(
        name=voice.name,
        provider=voice.provider,
        language=voice.language,
        model=voice.model,
        reference=voice.reference,
        settings=dict(voice.settings),
        fallback=tuple(voice.fallback),
    )


class ConfigVoices:
    """The voices of config.yaml (tts.voices) plus the built-in one: a VoiceLookup that can list itself."""

    def __init__(self, tts: TtsSettings) -> None:
        builtin = builtin_voice(tts)
        self._voices: dict[str, VoiceSpec] = {builtin.name: builtin}
        self._voices |= {voice.name: voice_spec(voice) for voice in tts.voices}

    def get(self, name: str) -> VoiceSpec | None:
        return self._voices.get(name)

    def names(self) -> list[str]:
        return list(self._voices)


def loaders(settings: Settings, piper: PiperProvider, store: AssetStore) -> dict[str, Loader]:
    tts = settings.tts

    async def piper_loader() -> SpeechProvider:
        return piper

    async def openai() -> SpeechProvider:
        from voxloop.stages.tts.cloud.openai import load_openai

        return await load_openai(tts.openai)

    async def elevenlabs() -> SpeechProvider:
        from voxloop.stages.tts.cloud.elevenlabs import load_elevenlabs

        return await load_elevenlabs(tts.elevenlabs)

    async def google() -> SpeechProvider:
        from voxloop.stages.tts.cloud.google import load_google

        return await load_google(tts.google)

    table: dict[str, Loader] = {"piper": piper_loader, "openai": openai, "elevenlabs": elevenlabs, "google": google}
    if tts.xtts is not None:
        table["xtts"] = xtts_loader(tts.xtts, cache_root(store) / "xtts")
    return table


def xtts_loader(raw: Mapping[str, object], cache_dir: Path) -> Loader:
    async def load() -> SpeechProvider:
        try:  # the [xtts] extra (torch, coqui-tts) may be absent: then the xtts voices fall back
            xtts = importlib.import_module("voxloop.stages.tts.xtts")
        except ImportError as exc:
            raise ConfigError(
                f"tts.xtts is set but XTTS cannot be imported ({exc}): pip install 'voxloop[xtts]'"
            ) from exc
        xtts_settings = xtts.XttsSettings.model_validate(dict(raw))
        provider: SpeechProvider = await asyncio.to_thread(xtts.load_xtts, xtts_settings, cache_dir)
        return provider

    return load


def cache_root(store: AssetStore) -> Path:
    """Beside the model cache (~/.cache/voxloop/models → ~/.cache/voxloop), or inside a custom one."""
    return store.cache_dir.parent if store.cache_dir.name == "models" else store.cache_dir


def audio_cache(settings: Settings, store: AssetStore) -> AudioCache | None:
    cache = settings.tts.cache
    if not cache.enabled:
        return None
    return AudioCache(
        cache.dir or cache_root(store) / "tts-cache",
        max_bytes=int(cache.max_mb * 2**20),
        ttl_s=cache.ttl_s,
        max_chars=cache.max_chars,
    )


async def build_router(settings: Settings, store: AssetStore, extra_voices: Sequence[VoiceLookup] = ()) -> VoiceRouter:
    """The router with the built-in Piper voice loaded (AssetError if it cannot be) and the other
    providers the default voice's chain uses loading in the background."""
    from voxloop.stages.tts.piper import PiperProvider

    tts = settings.tts
    piper = PiperProvider(tts, store)
    builtin = builtin_voice(tts)
    loaded = await piper.voice(builtin.model)  # the last resort must work: fail startup now, as before
    router_settings = tts.router
    slots = {
        name: ProviderSlot(name, load, ProviderHealth(router_settings.backoff_initial_s, router_settings.backoff_max_s))
        for name, load in loaders(settings, piper, store).items()
    }
    router = VoiceRouter(
        slots,
        [ConfigVoices(tts), *extra_voices],
        default_voice=tts.default_voice or builtin.name,
        last_resort=builtin.name if router_settings.last_resort else None,
        first_audio_timeout_s=router_settings.first_audio_timeout_s,
        cache=audio_cache(settings, store),
        sample_rate=int(loaded.config.sample_rate),
    )
    await router.slots["piper"].get(router_settings.first_audio_timeout_s)
    router.chain()  # an unknown tts.default_voice fails here, at startup
    await router.warm([name for name in ConfigVoices(tts).names()])
    return router
