"""The shared audio helpers: resampling keeps time and pitch, streaming equals one-shot,
decoding reads real containers and refuses garbage, WAV and sample-format round trips."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from voxloop.pipeline.audio import (
    Resampler,
    decode_audio,
    float32_to_pcm16,
    pcm16_to_float32,
    read_wav,
    resample,
    write_wav,
)


def sine(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return float32_to_pcm16((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32))


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (22050, 16000), (16000, 48000), (48000, 16000)])
def test_resample_preserves_duration_and_frequency(src: int, dst: int) -> None:
    out = resample(sine(440.0, src), src, dst)
    assert out.dtype == np.int16
    assert abs(len(out) - dst) <= 2  # one second in, one second out
    assert peak_hz(out, dst) == pytest.approx(440.0, abs=2.0)


def test_resample_same_rate_is_identity() -> None:
    pcm = sine(300.0, 16000)
    assert np.array_equal(resample(pcm, 16000, 16000), pcm)


def test_streaming_resampler_matches_one_shot() -> None:
    rng = np.random.default_rng(7)
    pcm = sine(523.0, 22050, seconds=2.0)
    one_shot = resample(pcm, 22050, 24000)

    stream = Resampler(22050, 24000)
    pieces, start = [], 0
    while start < len(pcm):
        size = int(rng.integers(1, 3000))  # odd sizes, down to single samples
        pieces.append(stream.push(pcm[start : start + size]))
        start += size
    pieces.append(stream.flush())
    streamed = np.concatenate(pieces)

    assert abs(len(streamed) - len(one_shot)) <= 4
    n = min(len(streamed), len(one_shot))
    # No click or drift at piece boundaries: the two signals agree sample by sample.
    assert np.max(np.abs(streamed[:n].astype(int) - one_shot[:n].astype(int))) <= 2


def test_resampler_accepts_empty_pieces() -> None:
    stream = Resampler(22050, 16000)
    assert len(stream.push(np.zeros(0, dtype=np.int16))) == 0
    out = np.concatenate([stream.push(sine(440.0, 22050)), stream.flush()])
    assert abs(len(out) - 16000) <= 2


def encode(path: Path, pcm: np.ndarray, rate: int, codec: str, channels: int = 2) -> None:
    """Write `pcm` with FFmpeg as a stereo file of another codec/container, to decode it back."""
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        data = np.repeat(pcm.reshape(1, -1), channels, axis=0).T.reshape(1, -1)  # interleaved
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize(("suffix", "codec"), [(".flac", "flac"), (".wav", "pcm_s16le")])
def test_decode_audio_reads_other_rates_channels_and_codecs(tmp_path: Path, suffix: str, codec: str) -> None:
    path = tmp_path / f"tone{suffix}"
    encode(path, sine(440.0, 44100, seconds=1.5), 44100, codec)

    pcm = decode_audio(path, rate=16000)
    assert pcm.dtype == np.int16
    assert abs(len(pcm) - 24000) <= 16
    assert peak_hz(pcm, 16000) == pytest.approx(440.0, abs=2.0)
    assert np.array_equal(decode_audio(path.read_bytes(), rate=16000), pcm)


def test_decode_audio_rejects_corrupt_input(tmp_path: Path) -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="cannot decode audio from <bytes>"):
        decode_audio(garbage)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio at all\n" * 50)
    with pytest.raises(ValueError, match=r"cannot decode audio from .*notes\.wav"):
        decode_audio(text)


def test_decode_audio_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decode_audio(tmp_path / "absent.wav")


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = np.random.default_rng(3).integers(-32768, 32767, 12345, dtype=np.int16)
    write_wav(tmp_path / "x.wav", pcm, 22050)
    back, rate = read_wav(tmp_path / "x.wav")
    assert rate == 22050
    assert np.array_equal(back, pcm)


def test_read_wav_refuses_stereo_with_a_hint(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "s.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0" * 400)
    with pytest.raises(ValueError, match="decode_audio"):
        read_wav(tmp_path / "s.wav")


def test_float_conversions_round_trip_and_clip() -> None:
    pcm = np.array([-32768, -1000, 0, 1000, 32767], dtype=np.int16)
    back = float32_to_pcm16(pcm16_to_float32(pcm))
    assert np.max(np.abs(back.astype(int) - pcm.astype(int))) <= 1
    clipped = float32_to_pcm16(np.array([-3.0, 2.0], dtype=np.float32))
    assert clipped.tolist() == [-32767, 32767]  # clipped, not wrapped around
