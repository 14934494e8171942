"""XTTS v2's moving parts behind the provider: the coqui-tts model, speaker latents and their cache.

Everything here blocks and runs in the provider's ModelWorker thread. torch, coqui-tts and
transformers are reached through `import_stack` only (the optional `[xtts]` extra), so their
objects are typed `Any`: coqui-tts ships no type information.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxloop.pipeline.audio import decode_audio, float32_to_pcm16, pcm16_to_float32
from voxloop.pipeline.errors import AssetError, InputError, TransientError
from voxloop.pipeline.frames import PCM16

log = logging.getLogger(__name__)

INSTALL_HINT = "install the XTTS extra: pip install 'voxloop[xtts]' (or scripts/setup --xtts)"
REF_RATE = 22050  # what XTTS computes its conditioning from
MIN_REFERENCE_S = 1.0


@dataclass(frozen=True, slots=True)
class XttsParams:
    """Everything one reply is generated with, resolved: voice settings > tts.xtts > config.json."""

    language: str
    temperature: float
    length_penalty: float
    repetition_penalty: float
    top_k: int
    top_p: float
    speed: float
    stream_chunk_size: int

    def generate_kwargs(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "length_penalty": self.length_penalty,
            "repetition_penalty": self.repetition_penalty,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "speed": self.speed,
            "stream_chunk_size": self.stream_chunk_size,
        }


@dataclass(slots=True)
class XttsStats:
    """Counters for health pages and tests (written from the worker thread)."""

    latents_computed: int = 0
    latents_loaded: int = 0  # from the disk cache
    chunks: int = 0
    replies: int = 0
    cancelled: int = 0


@dataclass(frozen=True, slots=True)
class Latents:
    """A speaker's conditioning: the GPT's latents and the decoder's embedding (CPU tensors)."""

    gpt_cond_latent: Any
    speaker_embedding: Any


class _Stopped(Exception):
    """Raised inside generation when the consumer went away."""


def split_text(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at sentence ends, else between words."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in re.split(r"(?<=[.!?;:])\s+", text):
        for part in textwrap.wrap(sentence, width=limit, break_on_hyphens=False):
            if pieces and len(pieces[-1]) + 1 + len(part) <= limit:
                pieces[-1] += " " + part
            else:
                pieces.append(part)
    return pieces


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LatentCache:
    """Speaker latents per reference recording, in memory and as `<dir>/<key>.pt`. The key is the
    recording's sha256 plus the model's identity, so a renamed copy hits and an edited file misses.
    Used from the model's worker thread only."""

    def __init__(self, directory: Path, model_id: str, torch: Any, stats: XttsStats) -> None:
        self.directory = directory
        self.model_id = model_id
        self._torch = torch
        self._stats = stats
        self._memory: dict[str, Latents] = {}

    def path_for(self, reference: Path) -> Path:
        return self.directory / f"{sha256_file(reference)[:32]}-{self.model_id[:16]}.pt"

    def get(self, reference: Path, compute: Callable[[Path], Latents]) -> Latents:
        path = self.path_for(reference)
        key = path.name
        if key in self._memory:
            return self._memory[key]
        latents = self._load(path)
        if latents is None:
            started = time.monotonic()
            latents = compute(reference)
            self._stats.latents_computed += 1
            extra = {
                "event": "xtts_latents_computed",
                "file": reference.name,
                "s": round(time.monotonic() - started, 3),
            }
            log.info("xtts speaker latents computed", extra=extra)
            self._save(path, latents)
        else:
            self._stats.latents_loaded += 1
        self._memory[key] = latents
        return latents

    def _load(self, path: Path) -> Latents | None:
        if not path.is_file():
            return None
        try:
            data = self._torch.load(path, map_location="cpu", weights_only=True)
            return Latents(data["gpt_cond_latent"], data["speaker_embedding"])
        except Exception as exc:  # a damaged cache file is recomputed, not fatal
            log.warning(
                "xtts latents cache unreadable", extra={"event": "xtts_cache_bad", "file": path.name, "error": str(exc)}
            )
            return None

    def _save(self, path: Path, latents: Latents) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = {"gpt_cond_latent": latents.gpt_cond_latent, "speaker_embedding": latents.speaker_embedding}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._torch.save(data, tmp)
            os.replace(tmp, path)
        except OSError as exc:  # still usable from memory for this run
            log.warning("xtts latents not cached", extra={"event": "xtts_cache_write_failed", "error": str(exc)})
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Stack:
    """The [xtts] extra's modules (imported only when XTTS is loaded)."""

    torch: Any
    xtts: Any  # TTS.tts.models.xtts
    xtts_config: Any  # TTS.tts.configs.xtts_config
    stopping: Any  # transformers.generation.stopping_criteria


def import_stack() -> Stack:
    try:
        return Stack(
            torch=importlib.import_module("torch"),
            xtts=importlib.import_module("TTS.tts.models.xtts"),
            xtts_config=importlib.import_module("TTS.tts.configs.xtts_config"),
            stopping=importlib.import_module("transformers.generation.stopping_criteria"),
        )
    except ImportError as exc:
        raise AssetError(f"XTTS v2 needs coqui-tts and torch, which are not installed ({exc}): {INSTALL_HINT}") from exc
    except Exception as exc:  # a broken stack (wrong torch/torchaudio pair, no FFmpeg libraries) fails here
        raise AssetError(f"coqui-tts is installed but does not import ({exc}); reinstall it: {INSTALL_HINT}") from exc


class XttsModel:
    """The loaded coqui-tts model and what it needs from torch; every method blocks (worker thread only)."""

    def __init__(self, stack: Stack, model: Any, device: str, checkpoint_dir: Path) -> None:
        self._stack = stack
        self.torch = stack.torch
        self.model = model
        self.device = device
        self.config = model.config
        self.sample_rate: int = int(model.args.output_sample_rate)
        self.identity = model_identity(checkpoint_dir, self.config)

    @property
    def languages(self) -> list[str]:
        return list(self.config.languages)

    def char_limit(self, language: str) -> int:
        return int(self.model.tokenizer.char_limits.get(language.split("-")[0], 250))

    def speakers(self) -> list[str]:
        manager = self.model.speaker_manager
        return list(manager.speakers) if manager is not None else []

    def builtin_speaker(self, name: str) -> Latents:
        gpt_cond_latent, speaker_embedding = self.model.speaker_manager.speakers[name].values()
        return Latents(gpt_cond_latent, speaker_embedding)

    def condition(self, reference: Path) -> Latents:
        """Speaker latents from a recording in any format FFmpeg reads (the checkpoint's cloning settings)."""
        try:
            pcm = decode_audio(reference, rate=REF_RATE)
        except FileNotFoundError as exc:
            raise AssetError(f"the reference recording {reference} is missing: upload the voice again") from exc
        except ValueError as exc:
            raise InputError(f"the reference recording {reference} cannot be used: {exc}") from exc
        pcm = pcm[: REF_RATE * int(self.config.max_ref_len)]
        if len(pcm) < REF_RATE * MIN_REFERENCE_S:
            raise InputError(f"the reference recording {reference} holds under {MIN_REFERENCE_S:g} s of audio")
        torch = self.torch
        audio = torch.from_numpy(pcm16_to_float32(pcm))[None, :].to(self.device)
        if self.config.sound_norm_refs:
            audio = audio / audio.abs().max().clamp(min=1e-6) * 0.75
        with torch.inference_mode():
            embedding = self.model.get_speaker_embedding(audio, REF_RATE)
            latent = self.model.get_gpt_cond_latents(
                audio, REF_RATE, length=int(self.config.gpt_cond_len), chunk_length=int(self.config.gpt_cond_chunk_len)
            )
        return Latents(latent.detach().cpu().clone(), embedding.detach().cpu().clone())

    def generate(
        self, pieces: list[str], params: XttsParams, latents: Latents, stop: threading.Event
    ) -> Iterator[PCM16]:
        """int16 chunks of every piece in turn; stops between GPT tokens once `stop` is set."""
        criteria = self._stack.stopping.StoppingCriteriaList([_stop_criterion(self._stack, stop)])
        for piece in pieces:
            chunks = self.model.inference_stream(
                piece,
                params.language,
                latents.gpt_cond_latent,
                latents.speaker_embedding,
                enable_text_splitting=False,
                stopping_criteria=criteria,
                **params.generate_kwargs(),
            )
            try:
                for wav in chunks:
                    yield float32_to_pcm16(wav.detach().float().cpu().numpy())
            except _Stopped:
                return
            except (AssertionError, RuntimeError, ValueError) as exc:
                raise TransientError(f"XTTS failed while speaking: {exc}") from exc
            finally:
                chunks.close()

    def release(self) -> None:
        self.model = None
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


def _stop_criterion(stack: Stack, stop: threading.Event) -> Any:
    torch = stack.torch
    base: Any = stack.stopping.StoppingCriteria

    class StopWhenClosed(base):  # type: ignore[misc]
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if stop.is_set():
                raise _Stopped
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StopWhenClosed()


def model_identity(checkpoint_dir: Path, config: Any) -> str:
    """Which model (and cloning settings) latents belong to: config and vocab contents, the weights'
    size and mtime (hashing ~1.8 GB at every start would cost seconds)."""
    digest = hashlib.sha256()
    for name in ("config.json", "vocab.json"):
        path = checkpoint_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    weights = (checkpoint_dir / "model.pth").stat()
    cloning = (config.gpt_cond_len, config.gpt_cond_chunk_len, config.max_ref_len, config.sound_norm_refs)
    digest.update(f"{weights.st_size}:{weights.st_mtime_ns}:{cloning}".encode())
    return digest.hexdigest()
