"""Which llama-server binary the benchmark uses: the named one, then PATH, then this version's build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voxloop.bench import llama_server


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv(llama_server.ENV_BINARY, raising=False)
    return tmp_path / "cache" / "voxloop" / "bin"


def test_nothing_found_is_none(cache: Path) -> None:
    assert llama_server.find() is None


def test_only_this_versions_build_is_taken(cache: Path) -> None:
    stale = executable(llama_server.built_path("100.0.0"))  # e.g. built with AMX, which crashed
    assert llama_server.find() is None
    current = executable(llama_server.built_path())
    os.utime(stale, None)  # newer, and still not taken
    assert current.parent == cache and llama_server.find() == current


def test_path_and_then_the_variable_take_precedence(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executable(llama_server.built_path("100.0.0"))
    on_path = executable(tmp_path / "bin" / "llama-server")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert llama_server.find() == on_path
    named = executable(tmp_path / "elsewhere" / "my-llama-server")
    monkeypatch.setenv(llama_server.ENV_BINARY, str(named))
    assert llama_server.find() == named
