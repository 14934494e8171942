"""The upload check (voxloop/voices/quality.py) on real eval clips and on made-up signals.

The speech measures use the real Silero VAD (a 2 MB ONNX model, loaded once per module)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.voice_clips import (
    LONG_CLIPS,
    RATE,
    SPEECH_CLIP,
    clip,
    encode,
    scaled_to_peak,
    stereo_wav,
    wav_bytes,
    with_gain,
)
from voxloop.pipeline.assets import AssetStore
from voxloop.stages.vad import SileroVadModel, load_vad_model
from voxloop.voices.quality import (
    REFERENCE_RATE,
    QualityReport,
    UploadRejected,
    assess,
    clipping_ratio,
    decode_upload,
    frame_db,
    frames_of,
    spectral_flatness,
    speech_mask,
)


@pytest.fixture(scope="module")
def vad(asset_store: AssetStore) -> Iterator[SileroVadModel]:
    model = load_vad_model(asset_store)
    yield model
    model.close()


def check(vad: SileroVadModel, data: bytes) -> QualityReport:
    return asyncio.run(assess(vad, data))[1]


# --- the eval set: speech accepted, music called music, noise not speech ---------------------


def test_clean_speech_is_accepted_with_sane_measures(vad: SileroVadModel, eval_dir: Path) -> None:
    pcm = clip(eval_dir, SPEECH_CLIP)
    report = check(vad, wav_bytes(pcm))
    assert report.accepted, report.message
    assert report.code is None and report.message.startswith("Accepted")
    assert 7.0 < report.speech_s <= len(pcm) / RATE
    assert 0.7 < report.speech_ratio <= 1.0
    assert report.snr_db > 20 and report.clipping_ratio == 0.0
    assert -30 < report.loudness_dbfs < -10 and report.peak_dbfs < 0
    assert report.trim_s[0] < 1.0 and report.trim_s[1] > len(pcm) / RATE - 1.0


def test_every_eval_recording_is_judged_by_its_kind(
    vad: SileroVadModel, eval_dir: Path, manifest: list[dict[str, str]]
) -> None:
    """Music (5 clips, one with vocals) → music; noise → no speech; no speech clip is ever called music;
    every speech clip with 6-30 s of speech is accepted."""
    verdicts: dict[str, list[tuple[str, QualityReport]]] = {}
    for row in manifest:
        if row["category"] in ("wakeword", "silence"):
            continue
        report = check(vad, (eval_dir / row["file"]).read_bytes())
        verdicts.setdefault(row["category"], []).append((row["id"], report))
    assert {r.code for _, r in verdicts["music"]} == {"music"}, [(i, r.code) for i, r in verdicts["music"]]
    assert {r.code for _, r in verdicts["noise"]} == {"too_short"}, [(i, r.code) for i, r in verdicts["noise"]]
    speech = verdicts["utterance"] + verdicts["speech_notext"] + verdicts["speech_long"]
    assert not [i for i, r in speech if r.code == "music"]
    judged = [(i, r.code) for i, r in speech if 6.5 < r.speech_s < 29.5 and not r.accepted]
    assert not judged
    assert sum(r.accepted for _, r in speech) >= 25


# --- made-up cases from real speech -----------------------------------------------------------


def test_rejections_from_altered_speech(vad: SileroVadModel, eval_dir: Path) -> None:
    pcm = clip(eval_dir, SPEECH_CLIP)
    cases = {
        "too_quiet": scaled_to_peak(pcm, -60.0),
        "clipped": with_gain(pcm, 30.0),
        "too_short": pcm[: 3 * RATE],
        "too_long": np.concatenate([clip(eval_dir, c) for c in LONG_CLIPS]),
    }
    for code, audio in cases.items():
        report = check(vad, wav_bytes(audio))
        assert (report.verdict, report.code) == ("reject", code), (code, report)
        assert report.message.endswith(".") and len(report.message) > 40  # a sentence that says what to do
    quiet = check(vad, wav_bytes(scaled_to_peak(pcm, -60.0)))
    assert quiet.peak_dbfs == pytest.approx(-60.0, abs=0.2)
    clipped = check(vad, wav_bytes(with_gain(pcm, 30.0)))
    assert clipped.clipping_ratio > 0.05


def test_silence_and_white_noise(vad: SileroVadModel) -> None:
    silence = check(vad, wav_bytes(np.zeros(8 * RATE, dtype=np.int16)))
    assert silence.code == "too_quiet" and "nearly silent" in silence.message
    noise = np.random.default_rng(7).normal(0, 3000, 8 * RATE).astype(np.int16)
    report = check(vad, wav_bytes(noise))
    assert report.code == "too_short" and report.speech_s < 1.0
    assert report.flatness > 0.3  # white: flat spectrum


def test_a_rejection_for_unreadable_files_says_what_it_was(eval_dir: Path) -> None:
    good = encode(clip(eval_dir, SPEECH_CLIP), "m4a")
    wav = wav_bytes(clip(eval_dir, SPEECH_CLIP))
    cases = {
        b"": "empty",
        b"hello, I am a text file pretending to be a WAV\n" * 20: "not_audio",
        b"\x89PNG\r\n\x1a\n" + bytes(200): "not_audio",
        good[: len(good) // 3]: "corrupt",  # the M4A's index (moov) is cut off
        wav[:40]: "corrupt",  # the WAV header cut short
        b"XXXX" + wav[4:]: "corrupt",  # the RIFF magic overwritten
    }
    for data, code in cases.items():
        with pytest.raises(UploadRejected) as caught:
            decode_upload(data)
        assert caught.value.code == code, (data[:16], caught.value.message)
        assert "WAV" in caught.value.message or "again" in caught.value.message


@pytest.mark.parametrize("kind", ["mp3", "m4a", "ogg", "webm"])
def test_other_containers_decode_to_the_same_speech(kind: str, eval_dir: Path) -> None:
    pcm = clip(eval_dir, SPEECH_CLIP)
    decoded = decode_upload(encode(pcm, kind))
    assert abs(decoded.duration_s - len(pcm) / RATE) < 0.2
    assert len(decoded.reference) == pytest.approx(decoded.duration_s * REFERENCE_RATE, abs=REFERENCE_RATE * 0.01)
    original_db, decoded_db = frame_db(frames_of(pcm)), frame_db(frames_of(decoded.pcm))
    n = min(len(original_db), len(decoded_db)) - 20
    lag = int(np.argmax([np.corrcoef(original_db[:n], decoded_db[k : k + n])[0, 1] for k in range(20)]))
    assert np.corrcoef(original_db[:n], decoded_db[lag : lag + n])[0, 1] > 0.95  # same loudness contour


def test_stereo_is_mixed_to_mono(eval_dir: Path) -> None:
    pcm = clip(eval_dir, SPEECH_CLIP)
    decoded = decode_upload(stereo_wav(pcm, np.zeros_like(pcm)))
    assert decoded.channels == 2 and decoded.source_rate == RATE
    ratio = np.abs(decoded.pcm.astype(np.float64)).max() / np.abs(pcm.astype(np.float64)).max()
    assert 0.4 < ratio < 0.8  # the speaking channel at about -3 to -6 dB, not dropped and not doubled


def test_very_long_uploads_stop_decoding_early() -> None:
    with pytest.raises(UploadRejected) as caught:
        decode_upload(wav_bytes(np.zeros(20 * RATE, dtype=np.int16)), max_s=10.0)
    assert caught.value.code == "too_long"


# --- the pure measures ------------------------------------------------------------------------


def test_speech_mask_uses_hysteresis_and_bridges_short_pauses() -> None:
    probs = np.array([0.1, 0.6, 0.4, 0.4, 0.2, 0.2, 0.2, 0.9, 0.1] + [0.0] * 20 + [0.8, 0.1])
    mask = speech_mask(probs, bridge_s=0.1)  # 3 windows of 32 ms
    assert mask.tolist()[:9] == [False, True, True, True, True, True, True, True, False]
    assert not mask[9:29].any() and mask[29]


def test_clipping_ratio_counts_flat_tops_not_peaks() -> None:
    t = np.arange(RATE) / RATE
    sine = np.round(np.sin(2 * np.pi * 220 * t) * 32767 * 0.89).astype(np.int16)  # -1 dBFS peaks
    square = np.where(np.sin(2 * np.pi * 220 * t) >= 0, 32767, -32768).astype(np.int16)
    assert clipping_ratio(sine) == 0.0
    assert clipping_ratio(square) > 0.99
    assert clipping_ratio(with_gain(sine, 12.0)) > 0.3


def test_flatness_tells_tones_from_noise_and_levels_are_dbfs() -> None:
    t = np.arange(RATE) / RATE
    chord = np.sum([np.sin(2 * np.pi * f * t) for f in (262, 330, 392)], axis=0) * 8000
    noise = np.random.default_rng(1).normal(0, 8000, RATE)
    tone_flat = np.median(spectral_flatness(frames_of(chord.astype(np.int16))))
    noise_flat = np.median(spectral_flatness(frames_of(noise.astype(np.int16))))
    assert tone_flat < 0.01 < 0.3 < noise_flat
    full = np.full(RATE, 32767, dtype=np.int16)
    assert frame_db(frames_of(full))[0] == pytest.approx(0.0, abs=0.01)
    assert frame_db(frames_of(np.zeros(RATE, dtype=np.int16)))[0] == -100.0
