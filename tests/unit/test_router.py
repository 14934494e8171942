"""The voice router with scripted providers: fallback on load failure, error and first-audio
deadline (timed on the virtual clock), health with backoff and recovery, stats, the audio
cache, and cancellation that stops the provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from voxloop.pipeline.config import TtsSettings
from voxloop.pipeline.errors import AssetError, InputError, TransientError
from voxloop.pipeline.frames import AudioOutput, ReplyChunk
from voxloop.pipeline.session import Session
from voxloop.stages.tts import TtsStage
from voxloop.stages.tts.cache import AudioCache, cache_key
from voxloop.stages.tts.router import ProviderSlot, Spoken, VoiceRouter
from voxloop.stages.tts.stats import ProviderHealth, TtsCollector
from voxloop.stages.tts.voice import PcmBlock, ProviderName, VoiceSpec

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")
virtual = pytest.mark.looptime

DEADLINE_S = 1.0
BACKOFF_S = 5.0


class Scripted:
    """A SpeechProvider that speaks `blocks` blocks after `first_s`, one per `block_s`, or fails as told."""

    def __init__(
        self,
        name: ProviderName,
        *,
        first_s: float = 0.1,
        block_s: float = 0.05,
        blocks: int = 5,
        rate: int = 16000,
        error: Exception | None = None,
        error_after: int | None = None,
    ) -> None:
        self.name: ProviderName = name
        self.first_s, self.block_s, self.blocks, self.rate = first_s, block_s, blocks, rate
        self.error, self.error_after = error, error_after
        self.calls: list[tuple[str, str]] = []
        self.produced = 0
        self.closed = 0
        self.closed_provider = False

    async def stream(self, text: str, voice: VoiceSpec) -> AsyncGenerator[PcmBlock, None]:
        self.calls.append((text, voice.name))
        try:
            await asyncio.sleep(self.first_s)
            if self.error is not None and self.error_after is None:
                raise self.error
            for index in range(self.blocks):
                if index:
                    await asyncio.sleep(self.block_s)
                if self.error is not None and index == self.error_after:
                    raise self.error
                self.produced += 1
                yield PcmBlock(np.full(160, index + 1, dtype=np.int16), self.rate)
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        self.closed_provider = True


def slot(provider: Scripted, *, load_s: float = 0.0, load_error: Exception | None = None) -> ProviderSlot:
    async def load() -> Scripted:
        await asyncio.sleep(load_s)
        if load_error is not None:
            raise load_error
        return provider

    return ProviderSlot(provider.name, load, ProviderHealth(BACKOFF_S, 60.0))


class Voices:
    def __init__(self, *specs: VoiceSpec) -> None:
        self.specs = {spec.name: spec for spec in specs}

    def get(self, name: str) -> VoiceSpec | None:
        return self.specs.get(name)

    def names(self) -> list[str]:
        return list(self.specs)


CLONE = VoiceSpec("clone", "xtts", fallback=("cloud",))
CLOUD = VoiceSpec("cloud", "openai", model="alloy")
JOE = VoiceSpec("joe", "piper", model="en_US-joe-medium")


def make_router(*slots: ProviderSlot, cache: AudioCache | None = None, voices: Voices | None = None) -> VoiceRouter:
    return VoiceRouter(
        {s.name: s for s in slots},
        [voices or Voices(CLONE, CLOUD, JOE)],
        default_voice="clone",
        last_resort="joe",
        first_audio_timeout_s=DEADLINE_S,
        cache=cache,
    )


async def speak(router: VoiceRouter, text: str = "Hello there.", voice: str | None = None) -> list[Spoken]:
    return [spoken async for spoken in router.stream(text, voice)]


def now() -> float:
    return asyncio.get_running_loop().time()


# --- chains ----------------------------------------------------------------------------------


async def test_chain_follows_fallbacks_once_then_the_last_resort() -> None:
    loop_voice = VoiceSpec("a", "piper", fallback=("b", "nobody"))
    back = VoiceSpec("b", "piper", fallback=("a", "joe"))
    router = make_router(voices=Voices(loop_voice, back, JOE, CLONE))
    assert [v.name for v in router.chain("a")] == ["a", "b", "joe"]  # the cycle and the unknown name are skipped
    assert [v.name for v in router.chain()] == ["clone", "joe"]
    with pytest.raises(InputError, match=r"unknown voice 'darth': use one of a, b, joe, clone"):
        router.chain("darth")


# --- fallback --------------------------------------------------------------------------------


@virtual
async def test_a_healthy_primary_speaks_and_its_latency_is_measured() -> None:
    xtts, piper = Scripted("xtts", first_s=0.3), Scripted("piper")
    router = make_router(slot(xtts), slot(piper))
    start = now()
    spoken = await speak(router)
    assert now() - start == pytest.approx(0.3 + 4 * 0.05)
    assert [(s.voice, s.provider, s.fallback) for s in spoken] == [("clone", "xtts", False)] * 5
    assert piper.calls == []
    stats = router.stats()["xtts"][0]
    assert (stats.requests, stats.spoke, sum(stats.failures.values())) == (1, 1, 0)
    assert stats.first_audio_ema_s == pytest.approx(0.3)
    assert router.last_spoke is not None and router.last_spoke.provider == "xtts"


@virtual
async def test_a_provider_that_fails_to_load_is_skipped_and_marked_unhealthy() -> None:
    xtts, openai, piper = Scripted("xtts"), Scripted("openai"), Scripted("piper")
    missing = AssetError("XTTS checkpoint /models/xtts has no model.pth")
    router = make_router(slot(xtts, load_error=missing), slot(openai), slot(piper))
    spoken = await speak(router)
    assert {(s.voice, s.provider, s.fallback) for s in spoken} == {("cloud", "openai", True)}
    health = {status.name: status for status in router.health()}
    assert health["xtts"].state == "unhealthy"
    assert health["xtts"].reason is not None and "no model.pth" in health["xtts"].reason
    assert health["xtts"].retry_in_s == pytest.approx(BACKOFF_S - 0.3)  # less the 0.3 s openai spoke
    assert router.stats()["xtts"][0].failures["load"] == 1
    assert health["openai"].state == "ready" and health["piper"].state == "idle"


@virtual
async def test_an_error_before_any_audio_falls_back_to_the_next_voice() -> None:
    xtts = Scripted("xtts", error=TransientError("CUDA out of memory"))
    openai = Scripted("openai", error=TransientError("openai at http://x/v1 answered 503"))
    piper = Scripted("piper")
    router = make_router(slot(xtts), slot(openai), slot(piper))
    spoken = await speak(router)
    assert {(s.voice, s.provider) for s in spoken} == {("joe", "piper")}
    assert len(spoken) == 5
    assert (xtts.closed, openai.closed) == (1, 1)
    assert [s.name for s in router.health() if s.state == "unhealthy"] == ["openai", "xtts"]


@virtual
async def test_a_hanging_provider_is_dropped_at_the_first_audio_deadline() -> None:
    xtts, piper = Scripted("xtts", first_s=3600), Scripted("piper", first_s=0.2)
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    start = now()
    first = await anext(aiter(router.stream("Hello.")))
    # Exactly the deadline, then the fallback's own latency: not a moment of extra silence.
    assert now() - start == pytest.approx(DEADLINE_S + 0.2)
    assert (first.voice, first.provider, first.fallback) == ("joe", "piper", True)
    assert xtts.closed == 1 and xtts.produced == 0  # the hung synthesis was cancelled
    assert router.stats()["xtts"][0].failures["deadline"] == 1
    reason = next(s.reason for s in router.health() if s.name == "xtts")
    assert reason == f"no audio within {DEADLINE_S:g} s"


@virtual
async def test_a_slow_load_counts_against_the_deadline_but_goes_on_in_the_background() -> None:
    xtts, piper = Scripted("xtts", first_s=0.1), Scripted("piper", first_s=0.1)
    xtts_slot = slot(xtts, load_s=5.0)
    router = make_router(xtts_slot, slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    spoken = await speak(router)
    assert {s.provider for s in spoken} == {"piper"}
    assert xtts_slot.state == "loading" and xtts_slot.health.healthy  # loading is not a failure
    await asyncio.sleep(5.0)
    assert xtts_slot.state == "ready"
    assert {s.provider for s in await speak(router)} == {"xtts"}


@virtual
async def test_backoff_skips_the_failed_provider_then_a_probe_recovers_it() -> None:
    xtts, piper = Scripted("xtts", error=TransientError("boom")), Scripted("piper")
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    await speak(router)
    assert len(xtts.calls) == 1

    await asyncio.sleep(BACKOFF_S / 2)
    assert {s.provider for s in await speak(router)} == {"piper"}
    assert len(xtts.calls) == 1  # in backoff: not asked at all

    await asyncio.sleep(BACKOFF_S)
    probe = now()
    await speak(router)  # the backoff ran out: one probe, which fails again → twice the backoff
    assert len(xtts.calls) == 2
    health = router.stats()["xtts"][1]
    assert health.consecutive_failures == 2
    assert health.retry_at == pytest.approx(probe + xtts.first_s + 2 * BACKOFF_S)

    xtts.error = None  # the provider comes back
    await asyncio.sleep(2 * BACKOFF_S)
    assert {s.provider for s in await speak(router)} == {"xtts"}
    assert health.healthy and next(s.state for s in router.health() if s.name == "xtts") == "ready"


@virtual
async def test_when_every_provider_is_in_backoff_they_are_still_tried() -> None:
    xtts, piper = Scripted("xtts", error=TransientError("boom")), Scripted("piper", error=TransientError("boom"))
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    with pytest.raises(TransientError, match=r"no voice could speak: clone \(xtts\): failed: boom; joe \(piper\)"):
        await speak(router)
    piper.error = None
    assert {s.provider for s in await speak(router)} == {"piper"}  # tried despite its backoff


@virtual
async def test_a_voice_the_provider_refuses_does_not_mark_the_provider_unhealthy() -> None:
    openai, piper = Scripted("openai", error=InputError("unknown openai settings ['pitch']")), Scripted("piper")
    router = make_router(slot(openai), slot(piper), voices=Voices(VoiceSpec("clone", "openai"), JOE))
    assert {s.provider for s in await speak(router)} == {"piper"}
    assert router.stats()["openai"][1].healthy
    assert router.stats()["openai"][0].failures["error"] == 1


@virtual
async def test_an_error_after_audio_ends_the_chunk_without_repeating_it() -> None:
    xtts, piper = Scripted("xtts", error=TransientError("lost the GPU"), error_after=2), Scripted("piper")
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    spoken = await speak(router)
    assert [s.provider for s in spoken] == ["xtts", "xtts"]  # what was said stays said; no repeat by piper
    assert piper.calls == []
    assert not router.stats()["xtts"][1].healthy


@virtual
async def test_closing_the_stream_mid_speech_stops_the_provider() -> None:
    xtts = Scripted("xtts", blocks=100)
    router = make_router(slot(xtts), slot(Scripted("piper")))
    blocks = router.stream("A long story.")
    first = await anext(blocks)
    assert first.provider == "xtts"
    await blocks.aclose()
    assert xtts.closed == 1 and xtts.produced == 1
    assert router.stats()["xtts"][1].healthy  # a cancel is not a failure


@virtual
async def test_cancelling_the_consumer_task_stops_the_provider() -> None:
    xtts = Scripted("xtts", blocks=100, block_s=0.1)
    router = make_router(slot(xtts), slot(Scripted("piper")))
    heard = asyncio.Event()

    async def consume() -> None:
        async for _ in router.stream("A long story."):
            heard.set()

    task = asyncio.create_task(consume())
    await heard.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert xtts.closed == 1 and xtts.produced < 5


# --- stats -----------------------------------------------------------------------------------


@virtual
async def test_stats_are_exposed_as_prometheus_metrics() -> None:
    xtts, piper = Scripted("xtts", first_s=0.3), Scripted("piper", first_s=0.04)
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    await speak(router)
    xtts.error = TransientError("boom")
    await speak(router)
    registry = CollectorRegistry()
    registry.register(TtsCollector(router.stats, lambda: router.cache_stats))
    text = generate_latest(registry).decode()
    assert 'voxloop_tts_requests_total{provider="xtts"} 2.0' in text
    assert 'voxloop_tts_failures_total{kind="error",provider="xtts"} 1.0' in text
    assert 'voxloop_tts_first_audio_seconds_bucket{le="0.3",provider="xtts"} 1.0' in text
    assert 'voxloop_tts_first_audio_seconds_bucket{le="0.05",provider="piper"} 1.0' in text
    assert 'voxloop_tts_first_audio_seconds_count{provider="piper"} 1.0' in text
    assert 'voxloop_tts_provider_healthy{provider="xtts"} 0.0' in text
    assert 'voxloop_tts_first_audio_ema_seconds{provider="xtts"} 0.3' in text


@virtual
async def test_the_first_audio_ema_moves_a_fifth_of_the_way() -> None:
    xtts = Scripted("xtts", first_s=0.5)
    router = make_router(slot(xtts), slot(Scripted("piper")))
    await speak(router)
    xtts.first_s = 1.0 - 1e-3  # under the deadline
    await speak(router)
    assert router.stats()["xtts"][0].first_audio_ema_s == pytest.approx(0.5 + 0.2 * (0.999 - 0.5))


# --- the stage on the router -------------------------------------------------------------------


@virtual
async def test_the_stage_resamples_each_voice_and_the_trace_names_who_spoke() -> None:
    xtts = Scripted("xtts", error=AssetError("no weights"))
    piper = Scripted("piper", rate=22050, blocks=3)
    router = make_router(slot(xtts), slot(piper), voices=Voices(VoiceSpec("clone", "xtts"), JOE))
    session = Session()
    stage = TtsStage(session, TtsSettings(frame_ms=40), router, 24000)
    out = [f async for f in stage.process(session.make(ReplyChunk, text="Hi there.", index=0))]
    assert all(isinstance(f, AudioOutput) and len(f.pcm) == 960 and f.sample_rate == 24000 for f in out)
    assert len(out) == -(-round(3 * 160 * 24000 / 22050) // 960)
    assert session.trace.notes == {"tts_voice": "joe", "tts_provider": "piper", "tts_fallback": True}


# --- the cache (real disk, real clock) ---------------------------------------------------------


def leftovers(directory: Path) -> list[Path]:
    return list(directory.rglob(".tmp-*"))


def entries(directory: Path) -> list[bytes]:
    return [path.read_bytes() for path in directory.glob("*/*.wav")]


def block(seconds: float, rate: int = 16000, value: int = 7) -> PcmBlock:
    return PcmBlock(np.full(int(seconds * rate), value, dtype=np.int16), rate)


def test_cache_keys_address_content_and_never_hold_the_text() -> None:
    def joe(name: str = "joe", provider: ProviderName = "piper", scale: float = 1.0) -> VoiceSpec:
        return VoiceSpec(name, provider, model="en_US-joe-medium", settings={"length_scale": scale})

    key = cache_key(joe(), "Welcome back!")
    assert key == cache_key(joe("renamed"), "Welcome back!")
    assert key != cache_key(joe(), "Welcome back.")
    assert key != cache_key(joe(scale=1.2), "Welcome back!")
    assert key != cache_key(joe(provider="openai"), "Welcome back!")
    assert len(key) == 64 and "welcome" not in key.lower()


async def test_cache_round_trip_ttl_and_size_bound(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    one_s = 16000 * 2 + 44  # a second of 16 kHz audio as WAV
    cache = AudioCache(tmp_path, max_bytes=3 * one_s, ttl_s=100.0, max_chars=50, now=lambda: clock[0])
    assert await cache.get("a" * 64) is None
    await cache.put("a" * 64, block(1.0, value=1))
    hit = await cache.get("a" * 64)
    assert hit is not None and hit.sample_rate == 16000 and hit.pcm.tolist() == [1] * 16000
    assert not leftovers(tmp_path)  # written atomically, nothing left behind

    for index, key in enumerate(("b" * 64, "c" * 64, "d" * 64)):  # each entry a second younger
        clock[0] += 1
        await cache.put(key, block(1.0, value=index + 2))
    assert cache.size_bytes() <= 3 * one_s
    assert await cache.get("a" * 64) is None  # the oldest went first
    assert await cache.get("d" * 64) is not None

    clock[0] += 101  # past the TTL
    assert await cache.get("d" * 64) is None
    assert not cache.path("d" * 64).exists()
    assert (cache.stats.hits, cache.stats.stored) == (2, 4)
    assert cache.accepts("x" * 50) and not cache.accepts("x" * 51)


async def test_a_damaged_cache_entry_is_a_miss(tmp_path: Path) -> None:
    cache = AudioCache(tmp_path, max_bytes=10**6, ttl_s=100.0, max_chars=50)
    path = cache.path("e" * 64)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"RIFF not really")
    assert await cache.get("e" * 64) is None
    assert not path.exists()


async def test_the_router_serves_repeated_phrases_from_the_cache(tmp_path: Path) -> None:
    piper = Scripted("piper", first_s=0.0, block_s=0.0, blocks=3)
    cache = AudioCache(tmp_path, max_bytes=10**6, ttl_s=3600.0, max_chars=40)
    router = make_router(slot(piper), cache=cache, voices=Voices(VoiceSpec("clone", "piper"), JOE))
    fresh = await speak(router, "Welcome back!")
    again = await speak(router, "Welcome back!")
    assert len(piper.calls) == 1
    assert [s.cached for s in fresh] == [False] * 3 and [s.cached for s in again] == [True]
    assert np.array_equal(np.concatenate([s.pcm for s in fresh]), again[0].pcm)
    assert again[0].provider == "piper" and again[0].voice == "clone"

    long = "A reply far too long to be worth keeping on disk."
    await speak(router, long)
    await speak(router, long)
    assert len(piper.calls) == 3  # longer than max_chars: never cached
    stored = entries(tmp_path)
    assert len(stored) == 1 and b"welcome" not in stored[0].lower()
