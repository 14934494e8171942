"""The TTS stage's pure core: fixed-size framing and per-chunk resampling, without a voice."""

from __future__ import annotations

import numpy as np
import pytest

from voxloop.pipeline.audio import resample
from voxloop.stages.tts import ChunkAudio, FrameSlicer, frame_samples


def test_slicer_cuts_any_pieces_into_equal_frames_in_order() -> None:
    slicer = FrameSlicer(4)
    signal = np.arange(1, 15, dtype=np.int16)  # 14 samples
    frames = slicer.push(signal[:3]) + slicer.push(signal[3:9]) + slicer.push(signal[9:]) + slicer.flush()
    assert [len(f) for f in frames] == [4, 4, 4, 4]
    assert np.concatenate(frames).tolist() == [*range(1, 15), 0, 0]  # tail padded with silence


def test_slicer_flush_without_remainder_adds_nothing() -> None:
    slicer = FrameSlicer(5)
    assert len(slicer.push(np.ones(10, dtype=np.int16))) == 2
    assert slicer.flush() == []
    assert slicer.flush() == []


def test_slicer_rejects_empty_frames() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        FrameSlicer(0)


@pytest.mark.parametrize(("rate", "ms", "samples"), [(24000, 40, 960), (16000, 20, 320), (22050, 10, 220)])
def test_frame_samples(rate: int, ms: int, samples: int) -> None:
    assert frame_samples(rate, ms) == samples


def test_chunk_audio_equals_one_shot_resampling_cut_into_frames() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(22050 * 2) / 22050
    signal = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    chunk = ChunkAudio(22050, 24000, 960)
    frames = []
    for piece in np.split(signal, np.sort(rng.integers(1, len(signal), 6))):  # uneven sentence blocks
        frames += chunk.push(piece)
    frames += chunk.finish()

    expected = resample(signal, 22050, 24000)
    out = np.concatenate(frames)
    assert all(len(f) == 960 for f in frames)
    assert len(frames) == -(-len(expected) // 960)  # ceil: only the last frame is padded
    assert np.max(np.abs(out[: len(expected)].astype(int) - expected.astype(int))) <= 2
    assert not out[len(expected) :].any()
