"""Piper (VITS on onnxruntime): a fast local voice, synthesising one sentence at a time.

Piper phonemises the whole text first, then runs the model sentence by sentence; each
sentence's audio is yielded as soon as it exists, so the first words of a long chunk are
heard while the rest is still being synthesised. Note: piper-tts is GPL-3.0.

PiperEngine is one loaded voice (a TtsEngine); PiperProvider is the router's SpeechProvider:
any number of voices, each .onnx loaded once on first use and shared by every voice name that
uses it, with each voice's own speed and noise settings and its own sample rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from piper import PiperConfig, PiperVoice, SynthesisConfig

from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.errors import AssetError, InputError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.workers import ModelWorker
from voxloop.stages.tts import TtsEngine, TtsStage
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

__all__ = ["PiperEngine", "PiperProvider", "TtsEngine", "TtsStage", "load_piper", "resolve_voice"]

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
        return _synthesize(self.voice, text, self.config)

    def close(self) -> None:
        self.worker.shutdown()


def load_piper(settings: TtsSettings, store: AssetStore) -> PiperEngine:
    """Load the voice `settings.voice` names (blocking; call once at startup)."""
    model = resolve_voice(settings.voice, store)
    return PiperEngine(load_voice_file(model, settings.voice, settings.threads), settings, name=model.stem)


def load_voice_file(model: Path, configured: str, threads: int = 1) -> PiperVoice:
    """Blocking: a Piper .onnx with its .onnx.json beside it; AssetError says what is missing or broken."""
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise AssetError(f"Piper voice {model} has no config beside it: put {config.name} in {model.parent}")
    try:
        piper_config = PiperConfig.from_dict(json.loads(config.read_text()))
        voice = PiperVoice(session=_onnx_session(model, threads), config=piper_config)
    except Exception as exc:
        raise AssetError(
            f"cannot load the Piper voice {configured!r} from {model}: {exc}. "
            "The .onnx file may be damaged: fetch it again."
        ) from exc
    for _ in _synthesize(voice, "Hello.", SynthesisConfig()):  # the first call pays for ONNX Runtime's buffers
        pass
    extra = {"event": "tts_model_loaded", "voice": model.stem, "sample_rate": voice.config.sample_rate}
    log.info("piper voice loaded", extra=extra)
    return voice


def _onnx_session(model: Path, threads: int) -> ort.InferenceSession:
    """`threads` per synthesis (tts.threads; 0: ONNX Runtime's default, one per core). With one, a
    call runs on the thread that makes it, so a live and a background call run side by side, each
    at its thread's priority (PiperProvider). Idle threads sleep instead of spinning: on two cores
    shared with Whisper and the LLM, a spinning thread takes the core someone else is waiting for."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


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


# --- the router's provider ------------------------------------------------------------------

SETTING_KEYS = ("length_scale", "noise_scale", "noise_w", "speed")


class PiperProvider:
    """Every Piper voice (a SpeechProvider): models loaded lazily, once each, in one worker."""

    name: ProviderName = "piper"

    def __init__(self, settings: TtsSettings, store: AssetStore) -> None:
        self.settings, self.store = settings, store
        # Two sessions' first clauses are made side by side (one ONNX thread each); a reply's later
        # sentences (Priority.AHEAD) on a background thread of low OS priority, beside them: they
        # never delay another session's first clause.
        self.worker = ModelWorker("tts-piper", max_workers=2, background=1)
        self._voices: dict[Path, PiperVoice] = {}
        self._lock = asyncio.Lock()

    async def voice(self, model: str | None) -> PiperVoice:
        """The loaded voice for a VoiceSpec.model (default: tts.voice); loads it on first use."""
        configured = model or self.settings.voice
        path = await self.worker.run(resolve_voice, configured, self.store)
        async with self._lock:
            if path not in self._voices:
                self._voices[path] = await self.worker.run(load_voice_file, path, configured, self.settings.threads)
            return self._voices[path]

    def synthesis_config(self, voice: VoiceSpec) -> SynthesisConfig:
        """The voice's settings over tts.*: length_scale (or speed = 1 / length_scale), noise_scale, noise_w."""
        knobs = _knobs(voice.name, voice.settings)
        length = knobs.get("length_scale", self.settings.length_scale)
        if "speed" in knobs:
            length = 1.0 / knobs["speed"]
        return SynthesisConfig(
            length_scale=length,
            noise_scale=knobs.get("noise_scale", self.settings.noise_scale),
            noise_w_scale=knobs.get("noise_w", self.settings.noise_w),
        )

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        config = self.synthesis_config(voice)
        loaded = await self.voice(voice.model)
        rate = int(loaded.config.sample_rate)
        # Sentence by sentence, each an independent call: other sessions may go in between.
        blocks = self.worker.stream(functools.partial(_synthesize, loaded, text, config), interleave=True)
        async with contextlib.aclosing(blocks):
            async for pcm in blocks:
                yield PcmBlock(pcm, rate)

    async def aclose(self) -> None:
        self.worker.shutdown()


_PHONEMIZER = threading.Lock()  # espeak-ng, behind Piper's phonemizer, is one global state per process


def _synthesize(voice: PiperVoice, text: str, config: SynthesisConfig) -> Iterator[PCM16]:
    """One int16 block per sentence. Phonemes under a lock: a live and a background thread may
    synthesise side by side (the ONNX session allows it; espeak-ng does not)."""
    with _PHONEMIZER:
        sentences = voice.phonemize(text)
    for phonemes in filter(None, sentences):
        audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config)
        yield _to_int16(audio[0] if isinstance(audio, tuple) else audio, config)


def _to_int16(audio: npt.NDArray[np.float32], config: SynthesisConfig) -> PCM16:
    """Piper's own finish of a sentence's audio: peak-normalised (unless turned off), volume, clipped."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if config.normalize_audio:
        audio = audio / peak if peak > 1e-8 else np.zeros_like(audio)
    audio = np.clip(audio * config.volume, -1.0, 1.0)
    return (audio * 32767).astype(np.int16)


def _knobs(name: str, settings: Mapping[str, Any]) -> dict[str, float]:
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise InputError(f"voice {name!r}: unknown Piper settings {unknown}; known: {', '.join(SETTING_KEYS)}")
    knobs: dict[str, float] = {}
    for key, value in settings.items():
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (value == 0 and not key.startswith("noise")):
            raise InputError(f"voice {name!r}: {key} = {value!r} must be a positive number")
        knobs[key] = float(value)
    return knobs
