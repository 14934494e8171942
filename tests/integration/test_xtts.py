"""XTTS v2 through the real coqui-tts code: a tiny random checkpoint built here, loaded by
load_xtts, conditioned on a real recording, streamed, cached, and cancelled mid-reply."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI"):  # scripts/test installs the extra: in CI a broken install must fail, not skip
    import TTS  # type: ignore[import-untyped]  # noqa: F401
pytest.importorskip("TTS", reason="the [xtts] extra (coqui-tts) is not installed")
torch = pytest.importorskip("torch")

from tests.integration.xtts_tiny import build_tiny_checkpoint  # noqa: E402
from voxloop.pipeline.errors import AssetError, ConfigError, InputError  # noqa: E402
from voxloop.stages.tts.voice import PcmBlock, VoiceSpec  # noqa: E402
from voxloop.stages.tts.xtts import XttsProvider, XttsSettings, load_xtts, split_text  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.xtts]

CHUNK = {"stream_chunk_size": 2}  # GPT tokens per chunk: many small chunks from the tiny model
LONG_REPLY = " ".join(
    f"This is sentence number {n} of a reply that goes on for quite a while, long enough to need splitting."
    for n in range(8)
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("xtts") / "checkpoint")


@pytest.fixture(scope="module")
def reference(manifest: list[dict[str, str]], eval_dir: Path) -> Path:
    """A real utterance of 6-10 s (what a person would upload to clone their voice)."""
    rows = [r for r in manifest if r["category"] == "utterance" and 6.0 <= float(r["duration_s"]) <= 10.0]
    return eval_dir / rows[0]["file"]


@pytest.fixture(scope="module")
def provider(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[XttsProvider]:
    loaded = load_xtts(XttsSettings(checkpoint_dir=checkpoint, device="cpu"), tmp_path_factory.mktemp("cache"))
    yield loaded
    asyncio.run(loaded.aclose())


def voice_of(reference: Path, **settings: object) -> VoiceSpec:
    return VoiceSpec("clone", "xtts", reference=reference, settings={**CHUNK, **settings})


async def collect(provider: XttsProvider, text: str, voice: VoiceSpec) -> list[PcmBlock]:
    return [block async for block in provider.stream(text, voice)]


async def test_streams_int16_blocks_at_24k_from_a_cloned_voice(provider: XttsProvider, reference: Path) -> None:
    blocks = await collect(provider, "Hello there, how are you today?", voice_of(reference, temperature=0.9))

    assert len(blocks) >= 3  # streamed chunk by chunk, not one block at the end
    assert {b.sample_rate for b in blocks} == {24000}
    assert all(b.pcm.dtype == np.int16 and b.pcm.ndim == 1 and len(b.pcm) > 0 for b in blocks)
    audio = np.concatenate([b.pcm for b in blocks])
    assert np.abs(audio).max() > 0  # random weights speak noise, but not silence
    assert provider.stats.chunks >= len(blocks)
    cached = list(provider.latents_dir.glob("*.pt"))
    assert len(cached) == 1
    latents = torch.load(cached[0], weights_only=True)
    assert tuple(latents["gpt_cond_latent"].shape) == (1, 32, 64)  # perceiver: 32 latents of the GPT's width
    assert tuple(latents["speaker_embedding"].shape) == (1, 512, 1)
    assert torch.isfinite(latents["gpt_cond_latent"]).all() and latents["gpt_cond_latent"].std() > 0


async def test_latents_cached_on_disk_and_reused_by_the_next_start(
    checkpoint: Path, reference: Path, tmp_path: Path
) -> None:
    settings = XttsSettings(checkpoint_dir=checkpoint, device="cpu")
    first = load_xtts(settings, tmp_path)
    try:
        await first.prepare(voice_of(reference))
        await first.prepare(voice_of(reference))  # the second time from memory
        assert (first.stats.latents_computed, first.stats.latents_loaded) == (1, 0)
    finally:
        await first.aclose()
    [cached] = (tmp_path / "latents").glob("*.pt")
    written = cached.stat().st_mtime_ns

    second = load_xtts(settings, tmp_path)  # a new process would do the same
    try:
        renamed = tmp_path / "renamed copy.wav"  # keyed by content, not by name
        shutil.copyfile(reference, renamed)
        blocks = await collect(second, "Nice to see you again.", voice_of(renamed))
        assert blocks
        assert (second.stats.latents_computed, second.stats.latents_loaded) == (0, 1)
        assert cached.stat().st_mtime_ns == written

        edited = tmp_path / "edited.wav"  # other audio → other latents
        edited.write_bytes((await asyncio.to_thread(reference.read_bytes))[: -16000 * 2])
        await second.prepare(voice_of(edited))
        assert second.stats.latents_computed == 1
        assert len(list((tmp_path / "latents").glob("*.pt"))) == 2
    finally:
        await second.aclose()


async def test_closing_the_stream_stops_generation(provider: XttsProvider, reference: Path) -> None:
    voice = voice_of(reference)
    await provider.prepare(voice)
    pieces = split_text(LONG_REPLY, 250)
    assert len(pieces) >= 3  # several inference_stream calls, each several chunks
    before = provider.stats.chunks
    replies, cancelled = provider.stats.replies, provider.stats.cancelled

    stream = provider.stream(LONG_REPLY, voice)
    first = await anext(stream)
    assert len(first.pcm) > 0
    await stream.aclose()
    at_close = provider.stats.chunks - before

    # The worker has one thread: this runs only once the generation has really stopped.
    await asyncio.wait_for(provider.worker.run(lambda: None), timeout=60)
    after = provider.stats.chunks - before
    assert after <= at_close + 1  # at most the chunk being decoded when it closed
    assert after < 2 * len(pieces)  # far from the whole reply (≥ 5 chunks a piece)
    assert (provider.stats.replies, provider.stats.cancelled) == (replies + 1, cancelled + 1)
    assert await collect(provider, "Still works.", voice)  # the model is free for the next reply


async def test_bad_voices_are_refused_with_a_reason(provider: XttsProvider, reference: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="temperature"):
        await collect(provider, "Hi.", voice_of(reference, temperature=-1))
    with pytest.raises(InputError, match=r"length_scale.*allowed"):
        await collect(provider, "Hi.", voice_of(reference, length_scale=1.2))
    with pytest.raises(InputError, match="language 'xx'"):
        await collect(provider, "Hi.", voice_of(reference, language="xx"))
    with pytest.raises(InputError, match="no reference recording"):
        await collect(provider, "Hi.", VoiceSpec("bare", "xtts"))
    with pytest.raises(AssetError, match="missing"):
        await collect(provider, "Hi.", voice_of(tmp_path / "gone.wav"))
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not a recording")
    with pytest.raises(InputError, match="cannot be used"):
        await collect(provider, "Hi.", voice_of(not_audio))
    assert await collect(provider, "   ", voice_of(reference)) == []


def test_missing_checkpoint_files_are_named(checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(checkpoint / "config.json", tmp_path)
    with pytest.raises(AssetError, match=r"lacks model\.pth, vocab\.json.*huggingface\.co/coqui/XTTS-v2"):
        load_xtts(XttsSettings(checkpoint_dir=tmp_path), tmp_path / "cache")
    with pytest.raises(AssetError, match="not a directory"):
        load_xtts(XttsSettings(checkpoint_dir=tmp_path / "nowhere"), tmp_path / "cache")
    (tmp_path / "model.pth").write_bytes(b"not a checkpoint")
    shutil.copy(checkpoint / "vocab.json", tmp_path)
    with pytest.raises(AssetError, match="cannot load the XTTS checkpoint"):
        load_xtts(XttsSettings(checkpoint_dir=tmp_path, device="cpu"), tmp_path / "cache")


def test_missing_extra_says_how_to_install(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "TTS.tts.models.xtts", None)  # as if coqui-tts were not installed
    with pytest.raises(AssetError, match=r"pip install 'voxloop\[xtts\]'"):
        load_xtts(XttsSettings(checkpoint_dir=checkpoint), checkpoint.parent / "cache")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_asked_for_without_a_gpu(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        load_xtts(XttsSettings(checkpoint_dir=checkpoint, device="cuda"), checkpoint.parent / "cache")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_runs_on_cuda(checkpoint: Path, reference: Path, tmp_path: Path) -> None:
    gpu = load_xtts(XttsSettings(checkpoint_dir=checkpoint, device="auto"), tmp_path)
    try:
        assert gpu.device == "cuda"
        assert next(gpu._model.model.parameters()).is_cuda
        blocks = await collect(gpu, "Hello from the GPU.", voice_of(reference))
        assert len(blocks) >= 3 and all(b.sample_rate == 24000 for b in blocks)
    finally:
        await gpu.aclose()


def test_split_text_keeps_pieces_within_the_limit() -> None:
    assert split_text("  Hello   world. ", 250) == ["Hello world."]
    assert split_text("", 250) == []
    pieces = split_text(LONG_REPLY, 120)
    assert all(len(p) <= 120 for p in pieces) and " ".join(pieces) == " ".join(LONG_REPLY.split())
    assert split_text("One. Two three four five six.", 12) == ["One.", "Two three", "four five", "six."]
