"""Piper (VITS on onnxruntime): a fast local voice, synthesising one sentence at a time.

Piper phonemises the whole text first, then runs the model sentence by sentence; each
sentence's audio is yielded as soon as it exists, so the first words of a long chunk are
heard while the rest is still being synthesised. Note: piper-tts is GPL-3.0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from piper import PiperVoice, SynthesisConfig

from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.errors import AssetError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.workers import ModelWorker
from voxloop.stages.tts import TtsEngine, TtsStage

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

__all__ = ["PiperEngine", "TtsEngine", "TtsStage", "load_piper", "resolve_voice"]

log = logging.getLogger(__name__)


class PiperEngine:
    """One loaded Piper voice, shared by every session (a TtsEngine)."""

    def __init__(self, voice: PiperVoice, settings: TtsSettings, *, name: str = "piper") -> None:
        self.voice = voice
        self.sample_rate: int = voice.config.sample_rate
        self.worker = ModelWorker(f"tts-{name}")
        self.config = SynthesisConfig(
            length_scale=settings.length_scale,
            noise_scale=settings.noise_scale,
            noise_w_scale=settings.noise_w,
        )

    def synthesize(self, text: str) -> Iterator[PCM16]:
        """Blocking: one int16 block per sentence of `text`, at `sample_rate`."""
        for chunk in self.voice.synthesize(text, self.config):
            yield chunk.audio_int16_array

    def close(self) -> None:
        self.worker.shutdown()


def load_piper(settings: TtsSettings, store: AssetStore) -> PiperEngine:
    """Load the voice `settings.voice` names (blocking; call once at startup)."""
    model = resolve_voice(settings.voice, store)
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise AssetError(f"Piper voice {model} has no config beside it: put {config.name} in {model.parent}")
    try:
        voice = PiperVoice.load(model, config_path=config)
    except Exception as exc:
        raise AssetError(
            f"cannot load the Piper voice tts.voice = {settings.voice!r} from {model}: {exc}. "
            "The .onnx file may be damaged: fetch it again."
        ) from exc
    extra = {"event": "tts_model_loaded", "voice": model.stem, "sample_rate": voice.config.sample_rate}
    log.info("piper voice loaded", extra=extra)
    return PiperEngine(voice, settings, name=model.stem)


def resolve_voice(voice: str, store: AssetStore) -> Path:
    """A path to a .onnx voice (or a directory holding one) as-is; a voice name → its asset."""
    path = Path(voice).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise AssetError(f"tts.voice = {voice!r}: expected one .onnx voice in that directory, found {len(found)}")
        return found[0]
    if path.is_file():
        return path
    if path.suffix == ".onnx" or voice.startswith(("/", "./", "../", "~")):
        raise AssetError(f"tts.voice = {voice!r}: no such file; give the path of a Piper .onnx voice")
    name = voice.removeprefix("piper-")  # the voice's name, or its asset's name
    model = store.path(f"piper-{name}") / f"{name}.onnx"
    if not model.is_file():
        raise AssetError(f"the voice asset piper-{name} lacks {model.name}; fetch it again")
    return model
