"""Audio helpers shared by every stage: resampling, decoding, WAV files, sample formats.

All PCM here is mono int16 (`PCM16`). Resampling and decoding go through PyAV (FFmpeg's
libswresample), never hand-written DSP. `Resampler` keeps the filter state between pushes, so
audio resampled in pieces (a TTS stream) has no clicks or drift at the piece boundaries and
comes out the same as resampling it in one go.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np

from voxloop.pipeline.frames import PCM16, Float32Audio

_EMPTY = np.zeros(0, dtype=np.int16)


class Resampler:
    """Streaming mono int16 resampler: `push` pieces in order, then `flush` once at the end."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._swr = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)

    def push(self, pcm16: PCM16) -> PCM16:
        """Resample the next piece; returns what the filter can emit so far (may be empty)."""
        if self.src_rate == self.dst_rate:
            return np.asarray(pcm16, dtype=np.int16)
        if len(pcm16) == 0:
            return _EMPTY
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm16, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.src_rate
        return _concat(self._swr.resample(frame))

    def flush(self) -> PCM16:
        """The samples still held in the filter; call once, after the last push."""
        if self.src_rate == self.dst_rate:
            return _EMPTY
        return _concat(self._swr.resample(None))


def resample(pcm16: PCM16, src_rate: int, dst_rate: int) -> PCM16:
    """Resample a whole mono int16 signal; the duration is preserved."""
    resampler = Resampler(src_rate, dst_rate)
    return np.concatenate([resampler.push(pcm16), resampler.flush()])


def decode_audio(source: str | Path | bytes, rate: int = 16000) -> PCM16:
    """Decode any container/codec FFmpeg reads (a path or the file's bytes) to mono int16 at `rate`."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    swr = av.AudioResampler(format="s16", layout="mono", rate=rate)
    pieces: list[PCM16] = []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.audio:
                raise ValueError(f"{name} holds no audio stream")
            for frame in container.decode(container.streams.audio[0]):
                pieces.append(_concat(swr.resample(frame)))
            pieces.append(_concat(swr.resample(None)))
    except FileNotFoundError:
        raise
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot decode audio from {name}: {exc}; is it an audio file?") from exc
    return np.concatenate(pieces) if pieces else _EMPTY


def write_wav(path: str | Path, pcm16: PCM16, rate: int) -> None:
    """Write mono 16-bit PCM as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(pcm16, dtype="<i2").tobytes())


def read_wav(path: str | Path) -> tuple[PCM16, int]:
    """Read a mono 16-bit PCM WAV file; anything else: use `decode_audio`."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(
                f"{path} is not mono 16-bit PCM ({wav.getnchannels()} channels, "
                f"{8 * wav.getsampwidth()} bits); use decode_audio() for other formats"
            )
        data = wav.readframes(wav.getnframes())
        return np.frombuffer(data, dtype="<i2").astype(np.int16), wav.getframerate()


def pcm16_to_float32(pcm16: PCM16) -> Float32Audio:
    return (np.asarray(pcm16, dtype=np.float32) / 32768.0).astype(np.float32)


def float32_to_pcm16(audio: Float32Audio) -> PCM16:
    """Float samples in [-1, 1] to int16; out-of-range samples are clipped, not wrapped."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.round(scaled).astype(np.int16)


def _concat(frames: list[av.AudioFrame]) -> PCM16:
    if not frames:
        return _EMPTY
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)
