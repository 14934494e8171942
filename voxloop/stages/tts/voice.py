"""What every speech provider and the voice router agree on: a voice, a PCM block, a provider.

    VoiceSpec (voices/voices.yaml or config) ─► VoiceRouter ─► SpeechProvider.stream ─► PcmBlock …

A *provider* is one loaded speech engine (Piper, XTTS v2, a cloud API), shared by every session.
A *voice* is a named way of speaking: which provider, with which model or reference recording,
with which settings, and which voices to fall back to. Providers never know about sessions,
frames or the router; the router never knows how a provider makes sound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from voxloop.pipeline.frames import PCM16

ProviderName = Literal["piper", "xtts", "openai", "elevenlabs", "google"]


@dataclass(frozen=True, slots=True)
class VoiceSpec:
    """One voice. `model` is what the provider loads or asks for (a Piper voice asset or .onnx
    path, a cloud voice id); `reference` is the recording an XTTS voice is cloned from;
    `settings` holds the provider's own knobs (temperature, speed, length_scale, ...)."""

    name: str
    provider: ProviderName
    language: str = "en"
    model: str | None = None
    reference: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    fallback: tuple[str, ...] = ()  # names of the voices to try, in order, when this one fails


@dataclass(frozen=True, slots=True)
class PcmBlock:
    """Mono int16 audio as a provider produced it, at its own rate."""

    pcm: PCM16
    sample_rate: int


class SpeechProvider(Protocol):
    """A loaded speech engine, shared by every session."""

    @property
    def name(self) -> ProviderName: ...

    def stream(self, text: str, voice: VoiceSpec) -> AsyncIterator[PcmBlock]:
        """Speak `text` in `voice`, each block as soon as it exists. An async generator: closing
        or cancelling it stops the synthesis at the next block (blocking engines run in a
        ModelWorker, never on the event loop). Raises a VoxloopError subclass that says what
        went wrong (AssetError: weights missing; TransientError: a timeout or 5xx; InputError:
        text or settings the provider refuses)."""
        ...

    async def aclose(self) -> None:
        """Free models, workers and HTTP clients."""
        ...


class VoiceLookup(Protocol):
    """Where the router finds voices by name (the voices/voices.yaml store, or a plain dict)."""

    def get(self, name: str) -> VoiceSpec | None: ...
