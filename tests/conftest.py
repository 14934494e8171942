"""Shared fixtures: the eval recordings beside the checkout and the model asset store."""

from __future__ import annotations

import csv
import os
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from voxloop.pipeline.assets import AssetStore

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("VOXLOOP_EVAL_DIR", REPO.parent / "shared" / "eval"))


def read_wav(path: Path) -> np.ndarray:
    """16-bit mono WAV → int16 samples (the eval set is all 16 kHz mono PCM16)."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, path
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    if not (EVAL_DIR / "manifest.tsv").exists():
        message = f"eval set not found at {EVAL_DIR} (set VOXLOOP_EVAL_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing eval set must not pass as skipped tests
        pytest.skip(message)
    return EVAL_DIR


@pytest.fixture(scope="session")
def manifest(eval_dir: Path) -> list[dict[str, str]]:
    with (eval_dir / "manifest.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def conversations(eval_dir: Path) -> list[dict[str, str]]:
    with (eval_dir / "conversations.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --- model assets: fetched once into the user's cache (or $VOXLOOP_CACHE_DIR) and shared ---


@pytest.fixture(scope="session")
def asset_store() -> AssetStore:
    return AssetStore()


@pytest.fixture(scope="session")
def asset_dir(asset_store: AssetStore) -> Callable[[str], Path]:
    """asset_dir("silero-vad") -> the cached directory of that asset, fetched first if needed."""
    return asset_store.path
