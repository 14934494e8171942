"""voices/voices.yaml ⇄ VoiceSpec: names, atomic writes, nothing partial left, concurrent writers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.config import TtsSettings, VoiceSettings
from voxloop.pipeline.errors import ConfigError
from voxloop.stages.tts.voice import VoiceSpec
from voxloop.voices.store import (
    BadVoiceName,
    BuiltinVoice,
    VoiceExists,
    VoiceNotFound,
    VoiceStore,
    VoiceStoreError,
    builtin_voices,
)

JOE = VoiceSpec(name="en_US-joe-medium", provider="piper", model="en_US-joe-medium")
TONE = (np.sin(np.arange(24000) / 24000 * 2 * np.pi * 220) * 8000).astype(np.int16)


def store_in(folder: Path) -> VoiceStore:
    return VoiceStore(folder, [JOE])


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_a_cloned_voice_is_saved_and_read_back(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    saved = await store.add("alice", TONE, 24000, language="fr", settings={"temperature": 0.6}, quality={"snr_db": 30})
    assert files(tmp_path) == ["alice.wav", "voices.yaml"]
    pcm, rate = read_wav(tmp_path / "alice.wav")
    assert rate == 24000 and np.array_equal(pcm, TONE)

    again = store_in(tmp_path)  # a fresh process reading the folder
    spec = again.get("alice")
    assert spec == saved.spec
    assert spec is not None and spec.provider == "xtts" and spec.language == "fr"
    assert spec.reference == tmp_path / "alice.wav" and spec.reference.is_absolute()
    assert dict(spec.settings) == {"temperature": 0.6} and spec.fallback == ("en_US-joe-medium",)
    entry = yaml.safe_load((tmp_path / "voices.yaml").read_text())["voices"][0]
    assert entry["reference"] == "alice.wav" and entry["quality"] == {"snr_db": 30}
    assert again.names() == ["en_US-joe-medium", "alice"] and again.default == "en_US-joe-medium"
    assert again.get("en_US-joe-medium") == JOE and again.get("bob") is None


@pytest.mark.parametrize(
    "name",
    ["../evil", "..", "a/b", "a\\b", ".hidden", "", " ", "with space", "alice.wav", "x" * 49, "é", "-dash", "a\x00b"],
)
async def test_unsafe_names_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    store = store_in(tmp_path)
    with pytest.raises(BadVoiceName, match="letters, digits, '-' and '_'"):
        await store.add(name, TONE, 24000)
    assert files(tmp_path) == []
    assert not (tmp_path.parent / "evil.wav").exists()


async def test_a_failure_mid_write_leaves_the_old_yaml_and_no_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_in(tmp_path)
    await store.add("alice", TONE, 24000)
    before = (tmp_path / "voices.yaml").read_bytes()
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "voices.yaml":
            raise OSError(28, "No space left on device")  # the yaml's temp file is written; the swap fails
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        await store.add("bob", TONE, 24000)
    assert (tmp_path / "voices.yaml").read_bytes() == before
    assert files(tmp_path) == ["alice.wav", "voices.yaml"]  # bob.wav removed again, no temp files
    assert store.get("bob") is None and store_in(tmp_path).get("bob") is None

    with pytest.raises(OSError, match="No space"):
        await store.update("alice", settings={"speed": 1.5})
    assert store.get("alice") is not None and "speed" not in store.get("alice").settings  # type: ignore[union-attr]
    with pytest.raises(OSError, match="No space"):
        await store.delete("alice")
    assert (tmp_path / "voices.yaml").read_bytes() == before and (tmp_path / "alice.wav").exists()


async def test_a_failure_writing_the_recording_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_in(tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        await store.add("alice", TONE, 24000)
    assert files(tmp_path) == []


async def test_update_merges_settings_and_checks_fallbacks(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    await store.add("alice", TONE, 24000, settings={"temperature": 0.6})
    await store.add("bob", TONE, 24000)
    updated = await store.update("alice", settings={"speed": 1.2}, language="de", fallback=["bob", "en_US-joe-medium"])
    assert dict(updated.spec.settings) == {"temperature": 0.6, "speed": 1.2}
    assert updated.spec.fallback == ("bob", "en_US-joe-medium") and updated.spec.language == "de"
    assert store_in(tmp_path).get("alice") == updated.spec
    with pytest.raises(VoiceStoreError, match="'nobody' is not another known voice"):
        await store.update("alice", fallback=["nobody"])
    with pytest.raises(VoiceStoreError, match="'alice' is not another known voice"):
        await store.update("alice", fallback=["alice"])


async def test_builtin_missing_and_duplicate_voices(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    await store.add("alice", TONE, 24000)
    with pytest.raises(BuiltinVoice, match="built-in"):
        await store.delete("en_US-joe-medium")
    with pytest.raises(BuiltinVoice):
        await store.update("en_US-joe-medium", settings={"speed": 2})
    with pytest.raises(VoiceNotFound):
        await store.delete("bob")
    for taken in ("alice", "ALICE", "EN_us-joe-medium"):
        with pytest.raises(VoiceExists):
            await store.add(taken, TONE, 24000)
    await store.delete("alice")
    assert files(tmp_path) == ["voices.yaml"] and store_in(tmp_path).names() == ["en_US-joe-medium"]


async def test_concurrent_uploads_of_one_name_store_one_voice(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    results = await asyncio.gather(*(store.add("alice", TONE * k, 24000) for k in (1, 2, 3)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, VoiceExists) for r in results) == 2
    names = [entry["name"] for entry in yaml.safe_load((tmp_path / "voices.yaml").read_text())["voices"]]
    assert names == ["alice"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("voices: [", "not valid YAML"),
        ("voices: {}", "must hold 'voices:'"),
        ("voices:\n- {name: ../x}", "not allowed"),
        ("voices:\n- {name: x, reference: ../../etc/passwd.wav}", "inside"),
        ("voices:\n- {name: x, provider: robot}", "provider 'robot'"),
        ("voices:\n- {name: x}\n- {name: x}", "appears twice"),
    ],
)
def test_a_broken_voices_yaml_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "voices.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        store_in(tmp_path)
    assert str(tmp_path / "voices.yaml") in str(caught.value)


def test_the_repo_voices_yaml_loads_and_builtins_come_from_config() -> None:
    tts = TtsSettings(
        voice="/models/piper-en_GB-alan-low.onnx",
        voices=[VoiceSettings(name="amy", provider="piper", model="en_US-amy-low", fallback=["en_GB-alan-low"])],
    )
    builtins = builtin_voices(tts)
    assert [v.name for v in builtins] == ["en_GB-alan-low", "amy"]
    assert builtins[0].model == "/models/piper-en_GB-alan-low.onnx" and builtins[1].fallback == ("en_GB-alan-low",)
    repo = VoiceStore(Path(__file__).resolve().parents[2] / "voices", builtins, default="amy")
    assert repo.names()[:2] == ["en_GB-alan-low", "amy"] and repo.default == "amy"
