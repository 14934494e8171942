"""Turning HTTP bodies into PCM blocks: raw PCM16 streams and (streamed) WAV files."""

from __future__ import annotations

import struct

import numpy as np

from voxloop.pipeline.errors import TransientError
from voxloop.pipeline.frames import PCM16

UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streamed WAVs do not know their length


class PcmReader:
    """Little-endian int16 PCM arriving in arbitrary byte pieces (an odd byte waits for its pair)."""

    def __init__(self, channels: int = 1) -> None:
        self.channels = channels
        self._rest = b""

    def push(self, data: bytes) -> PCM16:
        data = self._rest + data
        whole = len(data) // (2 * self.channels) * 2 * self.channels
        self._rest = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
        return samples


class WavReader:
    """A RIFF/WAVE PCM16 file read as it streams: header first, then sample blocks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sample_rate: int | None = None
        self._buffer = b""
        self._pcm: PcmReader | None = None
        self._left: int | None = None  # data bytes still expected, when the header says
        self._channels = 1

    def push(self, data: bytes) -> PCM16:
        if self._pcm is None:
            self._buffer += data
            if not self._parse_header():
                return np.zeros(0, dtype=np.int16)
            data, self._buffer = self._buffer, b""
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        assert self._pcm is not None
        return self._pcm.push(data)

    def _parse_header(self) -> bool:
        buf = self._buffer
        if len(buf) < 12:
            return False
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise TransientError(f"{self.source} sent something that is not a WAV file")
        pos = 12
        while len(buf) >= pos + 8:
            chunk, size = buf[pos : pos + 4], struct.unpack("<I", buf[pos + 4 : pos + 8])[0]
            if chunk == b"data":
                if self.sample_rate is None:
                    raise TransientError(f"{self.source} sent a WAV without a format chunk")
                self._left = None if size in UNKNOWN_SIZES else size
                self._pcm, self._buffer = PcmReader(self._channels), buf[pos + 8 :]
                return True
            if len(buf) < pos + 8 + size:
                return False
            if chunk == b"fmt ":
                self._format(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size + (size & 1)
        return False

    def _format(self, fmt: bytes) -> None:
        tag, channels, rate = struct.unpack("<HHI", fmt[:8])
        bits = struct.unpack("<H", fmt[14:16])[0]
        if tag not in (1, 0xFFFE) or bits != 16:
            raise TransientError(f"{self.source} sent WAV audio that is not 16-bit PCM (format {tag}, {bits} bits)")
        self.sample_rate, self._channels = rate, channels
