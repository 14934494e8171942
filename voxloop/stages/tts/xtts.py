"""XTTS v2 (coqui-tts): voices cloned from a reference recording, streamed chunk by chunk.

    checkpoint dir ─► load_xtts ─► XttsProvider (one model, one ModelWorker, shared by every session)
    voice.reference ─► sha256 ─► LatentCache (memory, then disk, else computed once) ─► speaker latents
    text ─► pieces within the language's limit ─► model.inference_stream (in the worker) ─► PcmBlock @ 24 kHz

coqui-tts and torch are the optional `[xtts]` extra: this module imports without them (the
router reads XttsSettings from config) and only `load_xtts` imports them. Closing the stream
stops the GPT at its next token (a stopping criterion watches an Event), so a barge-in frees the
model mid-chunk rather than at the end of the chunk.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxloop.pipeline.config import Section
from voxloop.pipeline.errors import AssetError, ConfigError, InputError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.workers import ModelWorker
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec
from voxloop.stages.tts.xtts_model import (
    LatentCache,
    Latents,
    Stack,
    XttsModel,
    XttsParams,
    XttsStats,
    import_stack,
    split_text,
)

__all__ = ["LatentCache", "XttsParams", "XttsProvider", "XttsSettings", "XttsStats", "load_xtts", "split_text"]

log = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.pth", "vocab.json")
SPEAKERS_FILE = "speakers_xtts.pth"
WEIGHTS_HINT = (
    "download XTTS v2 (config.json, model.pth, vocab.json, speakers_xtts.pth) from "
    "https://huggingface.co/coqui/XTTS-v2 into that directory (CPML licence: non-commercial use)"
)


class XttsSettings(Section):
    """`tts.xtts` in config.yaml. Unset voice knobs fall back to the checkpoint's config.json."""

    checkpoint_dir: Path = Field(description="directory holding config.json, model.pth, vocab.json")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    speakers_file: Path | None = Field(None, description="built-in speakers; default: speakers_xtts.pth if present")
    stream_chunk_size: int = Field(20, ge=1, le=400, description="GPT tokens per streamed chunk (~46 ms of audio each)")


class XttsVoiceOverrides(BaseModel):
    """What a voice's `settings` may set (the same bounds as the voices API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(None, gt=0.0, le=2.0)
    length_penalty: float | None = Field(None, ge=-10.0, le=10.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=50.0)
    top_k: int | None = Field(None, ge=1, le=500)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    speed: float | None = Field(None, ge=0.25, le=4.0)
    language: str | None = None
    stream_chunk_size: int | None = Field(None, ge=1, le=400)


class XttsProvider:
    """XTTS v2 as a SpeechProvider: one model on one device, shared by every session."""

    def __init__(self, model: XttsModel, settings: XttsSettings, cache_dir: Path) -> None:
        self.settings = settings
        self.stats = XttsStats()
        self.worker = ModelWorker("tts-xtts")
        self._model = model
        self._latents = LatentCache(cache_dir / "latents", model.identity, model.torch, self.stats)

    @property
    def name(self) -> ProviderName:
        return "xtts"

    @property
    def sample_rate(self) -> int:
        return self._model.sample_rate

    @property
    def latents_dir(self) -> Path:
        """Where the speaker latents are cached, one `<recording sha256>-<model>.pt` per voice."""
        return self._latents.directory

    @property
    def device(self) -> str:
        return self._model.device

    def params_for(self, voice: VoiceSpec) -> XttsParams:
        """The voice's knobs checked and resolved (InputError names the bad one)."""
        try:
            given = XttsVoiceOverrides.model_validate(dict(voice.settings))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            allowed = ", ".join(XttsVoiceOverrides.model_fields)
            raise InputError(f"voice {voice.name!r} has bad XTTS settings ({problems}); allowed: {allowed}") from exc
        language = given.language or voice.language
        if language not in self._model.languages:
            raise InputError(
                f"voice {voice.name!r}: XTTS does not speak language {language!r}; "
                f"use one of {', '.join(self._model.languages)}"
            )
        config = self._model.config
        return XttsParams(
            language=language,
            temperature=_pick(given.temperature, config.temperature),
            length_penalty=_pick(given.length_penalty, config.length_penalty),
            repetition_penalty=_pick(given.repetition_penalty, config.repetition_penalty),
            top_k=int(_pick(given.top_k, config.top_k)),
            top_p=_pick(given.top_p, config.top_p),
            speed=_pick(given.speed, 1.0),
            stream_chunk_size=given.stream_chunk_size or self.settings.stream_chunk_size,
        )

    async def prepare(self, voice: VoiceSpec) -> None:
        """Compute (or load) the voice's speaker latents now, e.g. right after an upload."""
        await self.worker.run(self._latents_for, voice)

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        params = self.params_for(voice)
        pieces = split_text(text, self._model.char_limit(params.language))
        if not pieces:
            return
        latents = await self.worker.run(self._latents_for, voice)
        stop = threading.Event()
        started = time.monotonic()
        blocks = 0
        async with contextlib.aclosing(self.worker.stream(lambda: self._generate(pieces, params, latents, stop))) as it:
            try:
                async for pcm in it:
                    if blocks == 0:
                        extra = {"event": "xtts_first_audio", "s": round(time.monotonic() - started, 3)}
                        log.debug("xtts first audio", extra=extra)
                    blocks += 1
                    yield PcmBlock(pcm, self.sample_rate)
            finally:
                stop.set()  # stops the GPT at its next token, even mid-chunk

    def _generate(
        self, pieces: list[str], params: XttsParams, latents: Latents, stop: threading.Event
    ) -> Iterator[PCM16]:
        finished = False
        try:
            for pcm in self._model.generate(pieces, params, latents, stop):
                self.stats.chunks += 1
                yield pcm
            finished = not stop.is_set()
        finally:
            self.stats.replies += 1
            if not finished:
                self.stats.cancelled += 1

    def _latents_for(self, voice: VoiceSpec) -> Latents:
        if voice.reference is not None:
            reference = Path(voice.reference).expanduser()
            if not reference.is_file():
                raise AssetError(
                    f"voice {voice.name!r}: its reference recording {reference} is missing; upload it again"
                )
            return self._latents.get(reference, self._model.condition)
        speakers = self._model.speakers()
        if voice.model and voice.model in speakers:
            return self._model.builtin_speaker(voice.model)
        known = f"built-in speakers: {', '.join(speakers[:5])}, ..." if speakers else "this checkpoint has none"
        raise InputError(
            f"voice {voice.name!r} has no reference recording: upload one (POST /api/voices) "
            f"or name a built-in XTTS speaker in its model ({known})"
        )

    async def aclose(self) -> None:
        self.worker.shutdown()
        self._model.release()


def _pick(value: float | None, default: Any) -> float:
    return float(value) if value is not None else float(default)


def load_xtts(settings: XttsSettings, cache_dir: Path) -> XttsProvider:
    """Load XTTS v2 from `settings.checkpoint_dir` (blocking: call it off the event loop, once).
    Speaker latents are cached under `cache_dir/latents`."""
    directory = settings.checkpoint_dir.expanduser()
    speakers = _check_checkpoint(directory, settings)
    stack = import_stack()
    device = _pick_device(settings.device, stack.torch)
    started = time.monotonic()
    model = XttsModel(stack, _load_model(stack, directory, speakers, device), device, directory)
    extra = {"event": "tts_model_loaded", "engine": "xtts", "device": device, "s": round(time.monotonic() - started, 2)}
    log.info("xtts model loaded", extra=extra)
    return XttsProvider(model, settings, cache_dir)


def _check_checkpoint(directory: Path, settings: XttsSettings) -> Path | None:
    if not directory.is_dir():
        raise AssetError(f"tts.xtts.checkpoint_dir = {str(directory)!r} is not a directory: {WEIGHTS_HINT}")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise AssetError(f"the XTTS checkpoint {directory} lacks {', '.join(missing)}: {WEIGHTS_HINT}")
    if settings.speakers_file is not None:
        speakers = settings.speakers_file.expanduser()
        if not speakers.is_file():
            raise AssetError(f"tts.xtts.speakers_file = {str(speakers)!r}: no such file ({WEIGHTS_HINT})")
        return speakers
    default = directory / SPEAKERS_FILE
    return default if default.is_file() else None


def _pick_device(choice: str, torch: Any) -> str:
    has_cuda = bool(torch.cuda.is_available())
    if choice == "cuda" and not has_cuda:
        raise ConfigError("tts.xtts.device = 'cuda' but torch sees no CUDA GPU: set it to 'auto' or 'cpu'")
    return "cuda" if choice == "cuda" or (choice == "auto" and has_cuda) else "cpu"


def _load_model(stack: Stack, directory: Path, speakers: Path | None, device: str) -> Any:
    try:
        config = stack.xtts_config.XttsConfig()
        config.load_json(str(directory / "config.json"))
        model = stack.xtts.Xtts(config)
        model.load_checkpoint(
            config,
            checkpoint_dir=str(directory),
            vocab_path=str(directory / "vocab.json"),
            speaker_file_path=str(speakers) if speakers else str(directory / SPEAKERS_FILE),
            eval=True,
        )
        return model.to(device)
    except Exception as exc:
        raise AssetError(
            f"cannot load the XTTS checkpoint in {directory}: {exc}. The files may be damaged or from another "
            f"model: {WEIGHTS_HINT}"
        ) from exc
