"""Test recordings for the voice upload checks, made from the real eval clips with av."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np
from av.audio.stream import AudioStream

from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.frames import PCM16

RATE = 16000
SPEECH_CLIP = "ljspeech_LJ001-0001"  # 9.7 s, one reader, clean: ~9 s of speech
LONG_CLIPS = [f"ljspeech_LJ001-{n:04d}" for n in range(1, 8)]  # joined: ~54 s, ~45 s of speech
MUSIC_CLIP = "music_vibe_ace"  # jazz, 30 s

# container, codec, the rate the codec runs at
ENCODINGS = {
    "mp3": ("mp3", "libmp3lame", 16000),
    "m4a": ("ipod", "aac", 16000),
    "ogg": ("ogg", "libopus", 48000),
    "webm": ("webm", "libopus", 48000),
}


def clip(eval_dir: Path, clip_id: str) -> PCM16:
    pcm, rate = read_wav(eval_dir / "audio" / f"{clip_id}.wav")
    assert rate == RATE
    return pcm


def wav_bytes(pcm: PCM16, rate: int = RATE) -> bytes:
    """A mono 16-bit WAV file's bytes."""
    return _wav(pcm.reshape(-1, 1), rate)


def encode(pcm: PCM16, kind: str, rate: int = RATE) -> bytes:
    """`pcm` (mono int16) in another container/codec: mp3, m4a, ogg or webm."""
    fmt, codec, codec_rate = ENCODINGS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=codec_rate, layout="mono")
        assert isinstance(stream, AudioStream) and stream.codec_context.format is not None
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=codec_rate)
        for piece in resampler.resample(frame) + resampler.resample(None):
            container.mux(stream.encode(piece))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def scaled_to_peak(pcm: PCM16, peak_dbfs: float) -> PCM16:
    peak = np.abs(pcm.astype(np.float64)).max()
    gain = 32767 * 10 ** (peak_dbfs / 20) / peak
    scaled: PCM16 = np.round(pcm * gain).astype(np.int16)
    return scaled


def with_gain(pcm: PCM16, gain_db: float) -> PCM16:
    """Louder by `gain_db`, clipped at full scale as an overdriven input would be."""
    return np.clip(pcm.astype(np.float64) * 10 ** (gain_db / 20), -32768, 32767).astype(np.int16)


def stereo_wav(left: PCM16, right: PCM16, rate: int = RATE) -> bytes:
    """A 2-channel 16-bit WAV."""
    return _wav(np.stack([left, right], axis=1), rate)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(samples.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()
