"""The voice router: speak a text in a named voice, falling back along the voice's chain.

    voice "clone" ─► chain: clone (xtts) → joe (piper) → … → the built-in Piper voice (last resort)
    for each voice in the chain, healthy providers first:
        cache hit?                      ─► its audio
        provider loads, and its first block arrives within first_audio_timeout_s
                                        ─► stream it (the chunk stays with this provider)
        else: mark the provider unhealthy (backoff), try the next voice

A provider in backoff is tried only after every available one has failed, so a turn never
goes silent while any provider can speak. A failure after the first audio ends that chunk
(re-speaking it elsewhere would repeat words). Closing or cancelling `stream` stops the
provider at its next block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxloop.pipeline.errors import InputError, TransientError
from voxloop.pipeline.frames import PCM16
from voxloop.stages.tts.cache import AudioCache, cache_key
from voxloop.stages.tts.stats import CacheStats, FailureKind, ProviderHealth, ProviderStats, loop_time
from voxloop.stages.tts.voice import PcmBlock, SpeechProvider, VoiceLookup, VoiceSpec

log = logging.getLogger(__name__)

Loader = Callable[[], Coroutine[Any, Any, SpeechProvider]]


@dataclass(frozen=True, slots=True)
class Spoken:
    """A block of speech as the router hands it out, with who spoke it."""

    pcm: PCM16
    sample_rate: int
    voice: str  # the voice that spoke (the requested one, or a fallback)
    provider: str
    fallback: bool = False
    cached: bool = False


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    state: str  # idle (never asked) | loading | ready | unhealthy
    reason: str | None
    retry_in_s: float | None
    requests: int
    failures: int
    first_audio_ema_ms: float | None


class ProviderFailed(Exception):
    """One voice could not speak this chunk; the router tries the next."""


class ProviderSlot:
    """A provider the router may use: loaded once (shared by every session), with health and stats."""

    def __init__(self, name: str, load: Loader, health: ProviderHealth, clock: Callable[[], float] = loop_time) -> None:
        self.name, self._load, self.health, self._clock = name, load, health, clock
        self.stats = ProviderStats()
        self.provider: SpeechProvider | None = None
        self._loading: asyncio.Task[SpeechProvider] | None = None

    @property
    def state(self) -> str:
        if self.provider is None and self._loading is not None:
            return "loading"
        if not self.health.healthy:
            return "unhealthy"
        return "ready" if self.provider is not None else "idle"

    def start_loading(self) -> asyncio.Task[SpeechProvider]:
        """Load in the background (once); a failure marks the provider unhealthy even if nobody waits."""
        if self._loading is None:
            self._loading = asyncio.create_task(self._load(), name=f"voxloop-tts-load-{self.name}")
            self._loading.add_done_callback(self._loaded)
        return self._loading

    def _loaded(self, task: asyncio.Task[SpeechProvider]) -> None:
        self._loading = None
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self.provider = task.result()
            log.info("tts provider loaded", extra={"event": "tts_provider_loaded", "provider": self.name})
        else:
            self.failed("load", f"failed to load: {error}")

    async def get(self, wait_s: float) -> SpeechProvider:
        """The loaded provider; waits at most `wait_s` for a load in progress (which goes on regardless)."""
        if self.provider is not None:
            return self.provider
        task = self.start_loading()
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(task)
        except TimeoutError:
            raise ProviderFailed(f"{self.name} is still loading") from None
        except Exception as exc:  # already recorded by _loaded
            raise ProviderFailed(self.health.reason or str(exc)) from exc

    def failed(self, kind: FailureKind, reason: str) -> ProviderFailed:
        self.stats.failures[kind] += 1
        backoff = self.health.failed(reason, self._clock())
        extra = {"event": "tts_provider_failed", "provider": self.name, "kind": kind, "backoff_s": round(backoff, 2)}
        log.warning("tts provider failed", extra=extra | {"reason": reason})
        return ProviderFailed(reason)

    async def aclose(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.wait([self._loading])
        if self.provider is not None:
            await self.provider.aclose()
            self.provider = None


class VoiceRouter:
    """Speaks texts in named voices, shared by every session (Engines.tts)."""

    def __init__(
        self,
        slots: Mapping[str, ProviderSlot],
        voices: Sequence[VoiceLookup],
        *,
        default_voice: str,
        last_resort: str | None,
        first_audio_timeout_s: float,
        cache: AudioCache | None = None,
        clock: Callable[[], float] = loop_time,
        sample_rate: int = 22050,
    ) -> None:
        self.slots, self.lookups = dict(slots), list(voices)
        self.default_voice, self.last_resort = default_voice, last_resort
        self.first_audio_timeout_s = first_audio_timeout_s
        self.cache, self._clock = cache, clock
        self.last_spoke: Spoken | None = None  # for /healthz: who spoke most recently
        self.sample_rate = sample_rate  # the last-resort (built-in) voice's rate; each block carries its own

    # -- voices ---------------------------------------------------------------------------

    def voice(self, name: str) -> VoiceSpec | None:
        for lookup in self.lookups:
            spec = lookup.get(name)
            if spec is not None:
                return spec
        return None

    def voice_names(self) -> list[str]:
        names: list[str] = []
        for lookup in self.lookups:
            listed = getattr(lookup, "names", None)
            for name in listed() if callable(listed) else ():
                if name not in names:
                    names.append(name)
        return names

    def chain(self, name: str | None = None) -> list[VoiceSpec]:
        """The voice `name` (default: default_voice), its fallbacks depth-first, then the last resort."""
        name = name or self.default_voice
        spec = self.voice(name)
        if spec is None:
            known = ", ".join(self.voice_names()) or "none"
            raise InputError(f"unknown voice {name!r}: use one of {known} (GET /api/voices)")
        chain: list[VoiceSpec] = []

        def visit(voice: VoiceSpec) -> None:
            if any(v.name == voice.name for v in chain):
                return
            chain.append(voice)
            for fallback in voice.fallback:
                found = self.voice(fallback)
                if found is None:
                    log.warning("unknown fallback voice", extra={"event": "tts_bad_fallback", "voice": voice.name})
                else:
                    visit(found)

        visit(spec)
        last = self.voice(self.last_resort) if self.last_resort else None
        if last is not None:
            visit(last)
        return chain

    # -- speaking -------------------------------------------------------------------------

    async def stream(self, text: str, voice: str | None = None) -> AsyncGenerator[Spoken, None]:
        """Speak `text`; each block as soon as it exists. Raises TransientError if no voice could."""
        chain = self.chain(voice)
        now = self._clock()
        ordered = [v for v in chain if self._available(v, now)] + [v for v in chain if not self._available(v, now)]
        reasons: list[str] = []
        for spec in ordered:
            attempt = self._attempt(spec, text, fallback=spec is not chain[0])
            try:
                async with contextlib.aclosing(attempt):  # closing this stream closes the provider's now
                    async for spoken in attempt:
                        yield spoken
                return
            except ProviderFailed as exc:
                reasons.append(f"{spec.name} ({spec.provider}): {exc}")
                self._log_skip(chain[0], spec, str(exc))
        raise TransientError("no voice could speak: " + "; ".join(reasons))

    async def speak(self, text: str, voice: str | None = None) -> tuple[PCM16, int, Spoken | None]:
        """All of `text`'s audio at once (REST, previews): (pcm, rate, the first block's origin)."""
        pieces: list[PCM16] = []
        rate, first = 0, None
        blocks = self.stream(text, voice)
        async with contextlib.aclosing(blocks):
            async for spoken in blocks:
                if first is None:
                    first, rate = spoken, spoken.sample_rate
                pieces.append(spoken.pcm if spoken.sample_rate == rate else _resample(spoken, rate))
        pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return pcm, rate, first

    def _available(self, spec: VoiceSpec, now: float) -> bool:
        slot = self.slots.get(spec.provider)
        return slot is not None and slot.health.available(now)

    async def _attempt(self, spec: VoiceSpec, text: str, *, fallback: bool) -> AsyncGenerator[Spoken, None]:
        slot = self.slots.get(spec.provider)
        if slot is None:
            raise ProviderFailed(f"the {spec.provider} provider is not configured")
        key = cache_key(spec, text) if self.cache is not None and self.cache.accepts(text) else None
        if key is not None and self.cache is not None and (hit := await self.cache.get(key)) is not None:
            yield self._spoken(hit, spec, slot, fallback, cached=True)
            return
        slot.stats.requests += 1
        started = self._clock()
        provider = await slot.get(self.first_audio_timeout_s)
        blocks = provider.stream(text, spec)
        kept: list[PcmBlock] = []
        async with closing(blocks):
            first = await self._first_block(slot, blocks, self.first_audio_timeout_s - (self._clock() - started))
            if first is None:
                return  # nothing speakable in the text: not a failure
            slot.stats.first_audio(self._clock() - started)
            slot.health.succeeded()
            kept.append(first)
            yield self._spoken(first, spec, slot, fallback)
            try:
                async for block in blocks:
                    kept.append(block)
                    yield self._spoken(block, spec, slot, fallback)
            except Exception as exc:  # audio already went out: end the chunk here, don't repeat it
                slot.failed("error", f"failed mid-stream: {exc}")
                return
        if key is not None and self.cache is not None and len({b.sample_rate for b in kept}) == 1:
            await self.cache.put(key, PcmBlock(np.concatenate([b.pcm for b in kept]), kept[0].sample_rate))

    async def _first_block(self, slot: ProviderSlot, blocks: AsyncIterator[PcmBlock], wait_s: float) -> PcmBlock | None:
        try:
            async with asyncio.timeout(max(wait_s, 0.0)) as deadline:
                return await anext(blocks)
        except StopAsyncIteration:
            return None
        except InputError as exc:  # this voice's text or settings, not the provider's health
            slot.stats.failures["error"] += 1
            raise ProviderFailed(str(exc)) from exc
        except TimeoutError as exc:
            if deadline.expired():
                raise slot.failed("deadline", f"no audio within {self.first_audio_timeout_s:g} s") from None
            raise slot.failed("error", f"failed: {exc}") from exc
        except Exception as exc:
            raise slot.failed("error", f"failed: {exc}") from exc

    def _spoken(
        self, block: PcmBlock, spec: VoiceSpec, slot: ProviderSlot, fallback: bool, *, cached: bool = False
    ) -> Spoken:
        spoken = Spoken(block.pcm, block.sample_rate, spec.name, slot.name, fallback, cached)
        self.last_spoke = spoken
        return spoken

    def _log_skip(self, requested: VoiceSpec, skipped: VoiceSpec, reason: str) -> None:
        extra = {"event": "tts_fallback", "requested": requested.name, "skipped": skipped.name}
        log.info("tts voice skipped", extra=extra | {"provider": skipped.provider, "reason": reason})

    # -- health and lifecycle ---------------------------------------------------------------

    async def warm(self, voices: Sequence[str] = ()) -> None:
        """Start loading every provider the chains of `voices` (default: the default voice) use."""
        for name in voices or [self.default_voice]:
            for spec in self.chain(name):
                slot = self.slots.get(spec.provider)
                if slot is not None and slot.provider is None:
                    slot.start_loading()

    def health(self) -> list[ProviderStatus]:
        now = self._clock()

        def ema_ms(stats: ProviderStats) -> float | None:
            return None if stats.first_audio_ema_s is None else stats.first_audio_ema_s * 1000

        return [
            ProviderStatus(
                name=name,
                state=slot.state,
                reason=slot.health.reason,
                retry_in_s=slot.health.retry_in(now),
                requests=slot.stats.requests,
                failures=sum(slot.stats.failures.values()),
                first_audio_ema_ms=ema_ms(slot.stats),
            )
            for name, slot in sorted(self.slots.items())
        ]

    def stats(self) -> dict[str, tuple[ProviderStats, ProviderHealth]]:
        return {name: (slot.stats, slot.health) for name, slot in self.slots.items()}

    @property
    def cache_stats(self) -> CacheStats | None:
        return self.cache.stats if self.cache is not None else None

    async def aclose(self) -> None:
        for slot in self.slots.values():
            await slot.aclose()


@contextlib.asynccontextmanager
async def closing(blocks: AsyncIterator[PcmBlock]) -> AsyncIterator[None]:
    """Close a provider's stream on the way out (an async generator stops its synthesis)."""
    try:
        yield
    finally:
        aclose = getattr(blocks, "aclose", None)
        if aclose is not None:
            await aclose()


def _resample(spoken: Spoken, rate: int) -> PCM16:
    from voxloop.pipeline.audio import resample

    return resample(spoken.pcm, spoken.sample_rate, rate)
