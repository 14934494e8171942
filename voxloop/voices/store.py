"""The voices folder: voices.yaml ⇄ VoiceSpec, plus each cloned voice's reference recording.

    voices/
      voices.yaml      voices: [{name, provider: xtts, language, reference: NAME.wav, settings, fallback, ...}]
      NAME.wav         the reference recording (mono PCM16, 24 kHz), trimmed to its speech

Built-in voices (the ones config.yaml declares) are listed too but live in config, so they cannot
be changed or deleted here. Every write is atomic (a temp file in the folder, fsync, os.replace):
a crash or a full disk leaves the previous voices.yaml and no half-written recording behind. One
asyncio lock orders the writers; the file work runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np
import yaml

from voxloop.pipeline.audio import write_wav
from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.errors import ConfigError, InputError
from voxloop.pipeline.frames import PCM16
from voxloop.stages.tts.providers import builtin_voice, voice_spec
from voxloop.stages.tts.voice import ProviderName, VoiceSpec

log = logging.getLogger(__name__)

YAML_NAME = "voices.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
NAME_RULES = "1 to 48 characters: letters, digits, '-' and '_', starting with a letter or digit"
YAML_HEADER = "# Cloned voices, managed by the voices API (GET/POST/PATCH/DELETE /api/voices).\n"


class VoiceStoreError(InputError):
    """A request the store refuses; `status` is the HTTP status that fits."""

    status = 400


class BadVoiceName(VoiceStoreError):
    status = 422


class VoiceExists(VoiceStoreError):
    status = 409


class VoiceNotFound(VoiceStoreError):
    status = 404


class BuiltinVoice(VoiceStoreError):
    status = 409


@dataclass(frozen=True, slots=True)
class StoredVoice:
    """A voice as listed: its spec, whether config owns it, and what the upload measured."""

    spec: VoiceSpec
    builtin: bool = False
    created: str | None = None
    quality: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def check_name(name: str) -> str:
    """`name` if it is a safe voice name (no path, no dots, no spaces), else BadVoiceName saying the rules."""
    if not NAME_PATTERN.fullmatch(name):
        raise BadVoiceName(f"voice name {name!r} is not allowed: use {NAME_RULES}, e.g. 'alice' or 'joe_2'")
    return name


class VoiceStore:
    """The voices a server knows: the built-in ones from config and the cloned ones in `folder`."""

    def __init__(self, folder: Path, builtins: Sequence[VoiceSpec] = (), *, default: str | None = None) -> None:
        self.folder = folder.expanduser().resolve()
        self.path = self.folder / YAML_NAME
        self._builtins = {voice.name: StoredVoice(voice, builtin=True) for voice in builtins}
        self._default = default
        self._voices: dict[str, StoredVoice] = self._load()
        self._lock = asyncio.Lock()

    # -- reading (VoiceLookup) ----------------------------------------------------------------

    def get(self, name: str) -> VoiceSpec | None:
        entry = self.entry(name)
        return entry.spec if entry else None

    def entry(self, name: str) -> StoredVoice | None:
        return self._builtins.get(name) or self._voices.get(name)

    def entries(self) -> list[StoredVoice]:
        """Built-in voices first (config order), then cloned ones by name."""
        return [*self._builtins.values(), *sorted(self._voices.values(), key=lambda v: v.name)]

    def names(self) -> list[str]:
        return [voice.name for voice in self.entries()]

    @property
    def default(self) -> str | None:
        """The voice sessions speak with: the configured default, else the first built-in voice."""
        return self._default or next(iter(self._builtins), None)

    def reference_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}.wav"

    # -- writing ----------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        reference: PCM16,
        rate: int,
        *,
        language: str = "en",
        settings: Mapping[str, Any] | None = None,
        quality: Mapping[str, Any] | None = None,
    ) -> StoredVoice:
        """Save a cloned (XTTS) voice: its recording, then its entry; either both or neither."""
        check_name(name)
        async with self._lock:
            self.ensure_free(name)
            path = self.reference_path(name)
            spec = VoiceSpec(
                name=name,
                provider="xtts",
                language=language,
                reference=path,
                settings=dict(settings or {}),
                fallback=(self.default,) if self.default else (),
            )
            created = datetime.now(UTC).isoformat(timespec="seconds")
            stored = StoredVoice(spec, created=created, quality=dict(quality or {}))
            voices = {**self._voices, name: stored}
            await asyncio.to_thread(self._write_voice, path, reference, rate, voices)
            self._voices = voices
        log.info("voice added", extra={"event": "voice_added", "voice": name, "audio_s": len(reference) / rate})
        return stored

    async def update(
        self,
        name: str,
        *,
        settings: Mapping[str, Any] | None = None,
        language: str | None = None,
        fallback: Sequence[str] | None = None,
    ) -> StoredVoice:
        """Change a cloned voice's settings (merged into the old ones), language or fallback chain."""
        async with self._lock:
            current = self._owned(name, "changed")
            spec = current.spec
            if fallback is not None:
                self._check_fallback(name, fallback)
            spec = replace(
                spec,
                settings={**spec.settings, **(settings or {})},
                language=language or spec.language,
                fallback=tuple(fallback) if fallback is not None else spec.fallback,
            )
            voices = {**self._voices, name: replace(current, spec=spec)}
            await asyncio.to_thread(self._write_yaml, voices)
            self._voices = voices
        log.info("voice updated", extra={"event": "voice_updated", "voice": name})
        return voices[name]

    async def delete(self, name: str) -> None:
        """Forget a cloned voice: its entry first (atomically), then its recording."""
        async with self._lock:
            current = self._owned(name, "deleted")
            voices = {key: value for key, value in self._voices.items() if key != name}
            await asyncio.to_thread(self._write_yaml, voices)
            self._voices = voices
            if current.spec.reference is not None:
                await asyncio.to_thread(_unlink_quietly, current.spec.reference)
        log.info("voice deleted", extra={"event": "voice_deleted", "voice": name})

    def ensure_free(self, name: str) -> None:
        """VoiceExists if `name` is taken (compared case-insensitively: alice.wav and Alice.wav clash)."""
        taken = {key.lower() for key in (*self._builtins, *self._voices)}
        if name.lower() in taken:
            raise VoiceExists(f"a voice named {name!r} exists already: pick another name or DELETE it first")

    def _owned(self, name: str, verb: str) -> StoredVoice:
        if name in self._builtins:
            raise BuiltinVoice(f"{name!r} is a built-in voice from config.yaml and cannot be {verb} here: edit tts.*")
        current = self._voices.get(name)
        if current is None:
            raise VoiceNotFound(f"no voice named {name!r}: GET /api/voices lists them")
        return current

    def _check_fallback(self, name: str, fallback: Sequence[str]) -> None:
        for other in fallback:
            if other == name or self.entry(other) is None:
                raise VoiceStoreError(f"fallback {other!r} is not another known voice: GET /api/voices lists them")

    # -- files (blocking; called in a thread) -------------------------------------------------

    def _write_voice(self, path: Path, reference: PCM16, rate: int, voices: Mapping[str, StoredVoice]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda tmp: write_wav(tmp, np.asarray(reference, dtype=np.int16), rate))
        try:
            self._write_yaml(voices)
        except BaseException:
            _unlink_quietly(path)  # the entry never made it: leave no orphan recording
            raise

    def _write_yaml(self, voices: Mapping[str, StoredVoice]) -> None:
        entries = [self._entry_dict(voice) for voice in sorted(voices.values(), key=lambda v: v.name)]
        text = YAML_HEADER + yaml.safe_dump({"voices": entries}, sort_keys=False, allow_unicode=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _entry_dict(self, voice: StoredVoice) -> dict[str, Any]:
        spec = voice.spec
        entry: dict[str, Any] = {"name": spec.name, "provider": spec.provider, "language": spec.language}
        if spec.model is not None:
            entry["model"] = spec.model
        if spec.reference is not None:
            entry["reference"] = spec.reference.name
        entry |= {"settings": dict(spec.settings), "fallback": list(spec.fallback)}
        if voice.created:
            entry["created"] = voice.created
        if voice.quality:
            entry["quality"] = dict(voice.quality)
        return entry

    def _load(self) -> dict[str, StoredVoice]:
        if not self.path.exists():
            return {}
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path} is not valid YAML: {exc}; fix or remove it") from None
        entries = data.get("voices") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"{self.path} must hold 'voices:' with a list of voices")
        voices: dict[str, StoredVoice] = {}
        for index, entry in enumerate(entries):
            voice = self._parse(entry, f"{self.path} voices[{index}]")
            if voice.name in voices or voice.name in self._builtins:
                raise ConfigError(f"{self.path}: voice {voice.name!r} appears twice (or is a built-in voice name)")
            voices[voice.name] = voice
        return voices

    def _parse(self, entry: Any, where: str) -> StoredVoice:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{where}: each voice needs a 'name'")
        try:
            name = check_name(entry["name"])
        except BadVoiceName as exc:
            raise ConfigError(f"{where}: {exc}") from None
        provider = entry.get("provider", "xtts")
        if provider not in get_args(ProviderName):
            raise ConfigError(f"{where}: provider {provider!r} is not one of {', '.join(get_args(ProviderName))}")
        reference = entry.get("reference")
        path = None
        if reference is not None:
            path = self.folder / str(reference)
            if Path(str(reference)).name != str(reference) or not path.name.endswith(".wav"):
                raise ConfigError(f"{where}: reference {reference!r} must be a .wav file name inside {self.folder}")
        spec = VoiceSpec(
            name=name,
            provider=provider,
            language=str(entry.get("language", "en")),
            model=entry.get("model"),
            reference=path,
            settings=dict(entry.get("settings") or {}),
            fallback=tuple(str(name) for name in entry.get("fallback") or ()),
        )
        return StoredVoice(spec, created=entry.get("created"), quality=dict(entry.get("quality") or {}))


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temp file beside `path`, fsync it, then os.replace: all or nothing."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable too, where the OS allows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def builtin_voices(tts: TtsSettings) -> list[VoiceSpec]:
    """The voices config.yaml declares: the built-in Piper voice (tts.voice), then tts.voices."""
    builtin = builtin_voice(tts)
    return [builtin, *(voice_spec(voice) for voice in tts.voices if voice.name != builtin.name)]
