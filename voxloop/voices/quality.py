"""Is an uploaded recording a good reference voice? Decode it, measure it, give a verdict.

    bytes ─► decode_upload (av, any container; mono; 16 kHz for analysis + 24 kHz kept for cloning)
          ─► Silero VAD probabilities (the server's shared model, in its worker)
          ─► analyse (pure numpy) ─► QualityReport: measures + accept / reject(code, what to do)

Speech is found with the Silero VAD rather than with energy: on the eval set it tells speech from
music and noise (voiced share of the sounding frames: speech ≥ 0.58, music ≤ 0.37, noise ≈ 0) where
an energy gate cannot, and it is already loaded. Music is sound that goes on (≥ 3 s) while the VAD
hears little voice in it and whose spectrum is tonal (median spectral flatness, 94 Hz–4 kHz, of
the sounding frames: music ≤ 0.032, noise ≥ 0.107 on the eval set).

The reference copy is kept at 24 kHz: XTTS conditions at 22.05 kHz, so 24 kHz keeps all it uses
whatever the upload's rate, and one fixed rate keeps the cloning side simple.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt

from voxloop.pipeline.audio import resample
from voxloop.pipeline.errors import InputError
from voxloop.pipeline.frames import PCM16

ANALYSIS_RATE = 16000
REFERENCE_RATE = 24000
WINDOW = 512  # the Silero window at 16 kHz: every per-frame measure uses the same 32 ms frames
WINDOW_S = WINDOW / ANALYSIS_RATE
MAX_DECODE_S = 120.0  # decoding stops here: longer uploads are rejected without reading the rest
VAD_CHUNK_WINDOWS = 128  # ~4 s per call on the shared VAD worker, so live sessions interleave

RejectCode = Literal["empty", "not_audio", "corrupt", "too_quiet", "clipped", "music", "too_short", "too_long"]
_Float = npt.NDArray[np.float64]
_Mask = npt.NDArray[np.bool_]

AUDIO_MARKERS = (b"RIFF", b"WAVE", b"fmt ", b"ID3", b"fLaC", b"OggS", b"\x1aE\xdf\xa3", b"ftyp", b"FORM", b"caff")
FORMATS_HINT = "Upload a WAV, MP3, M4A, OGG or WebM recording of 6 to 30 seconds of your voice."


@dataclass(frozen=True, slots=True)
class Limits:
    min_speech_s: float = 6.0
    max_speech_s: float = 30.0
    min_loud_dbfs: float = -50.0  # the loudest frames (95th percentile) below this: nearly silent
    min_speech_dbfs: float = -45.0  # speech RMS below this: too quiet to clone well
    max_clipping: float = 0.005  # share of samples at full scale within the speech span
    noisy_snr_db: float = 15.0  # below: accepted, with a warning
    music_min_active_s: float = 3.0
    music_max_voiced: float = 0.5
    music_max_flatness: float = 0.06


class UploadRejected(InputError):
    """The upload cannot be a reference voice: `code` says why, the message says what to do."""

    def __init__(self, code: RejectCode, message: str, report: QualityReport | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.report = code, message, report


@dataclass(frozen=True, slots=True)
class Decoded:
    """The upload as mono PCM16: 16 kHz for analysis, 24 kHz for cloning, and what it was."""

    pcm: PCM16
    reference: PCM16
    container: str
    codec: str
    source_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / ANALYSIS_RATE


@dataclass(frozen=True, slots=True)
class QualityReport:
    verdict: Literal["accept", "reject"]
    code: RejectCode | None  # why rejected; None when accepted
    message: str  # one sentence: what was found and what to do
    duration_s: float
    speech_s: float  # voiced time, short pauses inside phrases included
    speech_ratio: float  # speech_s / duration_s
    snr_db: float  # speech power over the quietest frames' power (capped at 80)
    clipping_ratio: float  # share of samples at full scale within the speech span
    loudness_dbfs: float  # RMS level of the speech frames (dBFS)
    peak_dbfs: float
    voiced_share: float  # share of the sounding frames the VAD calls speech (low: music or noise)
    flatness: float  # median spectral flatness of the sounding frames (low: tonal)
    trim_s: tuple[float, float]  # the span kept: first speech - 0.2 s .. last speech + 0.3 s
    warnings: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- decoding (blocking: run it in a thread) -------------------------------------------------


def decode_upload(data: bytes, *, max_s: float = MAX_DECODE_S) -> Decoded:
    """Any container FFmpeg reads → mono PCM16 at 16 and 24 kHz; UploadRejected says what is wrong."""
    if not data:
        raise UploadRejected("empty", f"The file is empty (0 bytes). {FORMATS_HINT}")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise _unreadable(data) from exc
    with container:
        if not container.streams.audio:
            kind = container.format.name
            raise UploadRejected("not_audio", f"The file ({kind}) holds no audio track. {FORMATS_HINT}")
        stream = container.streams.audio[0]
        channels = stream.channels or 0
        rate = stream.rate or ANALYSIS_RATE
        mono = av.AudioResampler(format="s16", layout="mono", rate=rate)  # a mix of every channel
        pieces: list[PCM16] = []
        decoded = 0
        try:
            for frame in container.decode(stream):
                pieces.append(_concat(mono.resample(frame)))
                decoded += len(pieces[-1])
                if decoded > max_s * rate:
                    raise UploadRejected(
                        "too_long", f"The recording is longer than {max_s:g} s. Upload 6 to 30 seconds of your voice."
                    )
        except av.error.FFmpegError as exc:
            raise UploadRejected(
                "corrupt",
                f"The {container.format.name} file is damaged: decoding failed ({exc.strerror}). "
                "Export or record it again.",
            ) from exc
        pieces.append(_concat(mono.resample(None)))
        codec, fmt = stream.codec_context.name, container.format.name
    source = np.concatenate(pieces)
    if not len(source):
        raise UploadRejected("empty", f"The {fmt} file holds no audio samples. {FORMATS_HINT}")
    pcm, reference = resample(source, rate, ANALYSIS_RATE), resample(source, rate, REFERENCE_RATE)
    return Decoded(pcm, reference, fmt, codec, rate, channels)


def _unreadable(data: bytes) -> UploadRejected:
    """Why av could not open the bytes: a damaged audio file, or not audio at all."""
    head = data[:64]
    if any(marker in head for marker in AUDIO_MARKERS) or (head[:1] == b"\xff" and head[1:2] >= b"\xe0"):
        return UploadRejected(
            "corrupt",
            f"The file looks like audio but is damaged or cut short ({len(data)} bytes). Export or record it again.",
        )
    kind = "a text file" if _is_text(data[:4096]) else "not an audio format FFmpeg knows"
    return UploadRejected("not_audio", f"The file is {kind}. {FORMATS_HINT}")


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text)


def _concat(frames: list[av.AudioFrame]) -> PCM16:
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16, copy=False)


# --- VAD probabilities (the shared Silero model) ---------------------------------------------


async def speech_probabilities(vad: Any, pcm: PCM16) -> _Float:
    """Silero's speech probability per 32 ms window, computed in the VAD's worker a few seconds
    at a time (`vad`: the server's SileroVadModel)."""
    stream = vad.new_stream()
    probs: list[float] = []
    step = VAD_CHUNK_WINDOWS * WINDOW
    for start in range(0, len(pcm), step):
        probs += await vad.worker.run(stream.probabilities, pcm[start : start + step])
    return np.asarray(probs, dtype=np.float64)


async def assess(vad: Any, data: bytes, limits: Limits | None = None) -> tuple[Decoded, QualityReport]:
    """Decode (in a thread), find speech (VAD worker), analyse (in a thread)."""
    decoded = await asyncio.to_thread(decode_upload, data)
    probs = await speech_probabilities(vad, decoded.pcm)
    report = await asyncio.to_thread(analyse, decoded.pcm, probs, limits or Limits())
    return decoded, report


# --- analysis (pure numpy) -------------------------------------------------------------------


def frames_of(pcm: PCM16) -> _Float:
    """The signal as [n, WINDOW] floats in [-1, 1], one row per VAD window (a partial tail dropped)."""
    n = len(pcm) // WINDOW
    return (np.asarray(pcm[: n * WINDOW], dtype=np.float64) / 32768.0).reshape(n, WINDOW)


def frame_db(frames: _Float) -> _Float:
    """RMS level of each frame in dBFS (floor -100)."""
    power = (frames**2).mean(axis=1) if len(frames) else np.zeros(0)
    return 10.0 * np.log10(np.maximum(power, 1e-10))


def speech_mask(probs: _Float, *, start: float = 0.5, end: float = 0.35, bridge_s: float = 0.3) -> _Mask:
    """Windows inside speech: hysteresis on the VAD probability, gaps shorter than `bridge_s` filled."""
    mask = np.zeros(len(probs), dtype=bool)
    inside = False
    for index, prob in enumerate(probs):
        inside = prob >= start or (inside and prob >= end)
        mask[index] = inside
    bridge = round(bridge_s / WINDOW_S)
    voiced = np.flatnonzero(mask)
    for a, b in itertools.pairwise(voiced):
        if 1 < b - a <= bridge + 1:
            mask[a:b] = True
    return mask


def spectral_flatness(frames: _Float) -> _Float:
    """Geometric over arithmetic mean of each frame's power spectrum, 94 Hz–4 kHz (0 tonal, 1 white)."""
    if not len(frames):
        return np.zeros(0)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(WINDOW), axis=1)) ** 2 + 1e-12
    band = spectrum[:, 3:128]
    flat: _Float = np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1)
    return flat


def clipping_ratio(pcm: PCM16) -> float:
    """Share of samples within 0.1 dB of full scale that sit in runs of two or more (a flat top)."""
    if not len(pcm):
        return 0.0
    high = np.abs(pcm.astype(np.int32)) >= 32400
    runs = high[1:] & high[:-1]
    flagged = np.zeros_like(high)
    flagged[1:] |= runs
    flagged[:-1] |= runs
    return float(flagged.mean())


def analyse(pcm: PCM16, probs: _Float, limits: Limits | None = None) -> QualityReport:
    """Measure a 16 kHz mono recording given its VAD probabilities, then judge it."""
    limits = limits or Limits()
    frames = frames_of(pcm)
    n = min(len(frames), len(probs))
    frames, probs = frames[:n], probs[:n]
    db = frame_db(frames)
    speech = speech_mask(probs)
    voiced_idx = np.flatnonzero(speech)
    duration_s = len(pcm) / ANALYSIS_RATE
    speech_s = len(voiced_idx) * WINDOW_S
    if len(voiced_idx):
        first, last = voiced_idx[0], voiced_idx[-1] + 1
        trim = (max(0.0, first * WINDOW_S - 0.2), min(duration_s, last * WINDOW_S + 0.3))
    else:
        trim = (0.0, duration_s)
    span = pcm[round(trim[0] * ANALYSIS_RATE) : round(trim[1] * ANALYSIS_RATE)]
    active = (db > (db.max() if n else 0.0) - 35.0) & (db > -60.0)
    loudness = _mean_db(db[speech] if len(voiced_idx) else db[active])
    flat = spectral_flatness(frames[active])
    measures: dict[str, Any] = {
        "duration_s": round(duration_s, 3),
        "speech_s": round(speech_s, 3),
        "speech_ratio": round(speech_s / duration_s, 3) if duration_s else 0.0,
        "snr_db": round(min(80.0, loudness - float(np.percentile(db, 10))) if n and len(voiced_idx) else 0.0, 1),
        "clipping_ratio": round(clipping_ratio(span), 5),
        "loudness_dbfs": round(loudness, 1),
        "peak_dbfs": round(_peak_dbfs(pcm), 1),
        "voiced_share": round(float((probs[active] >= 0.5).mean()) if active.any() else 0.0, 3),
        "flatness": round(float(np.median(flat)) if len(flat) else 1.0, 4),
        "trim_s": (round(trim[0], 3), round(trim[1], 3)),
    }
    loud_dbfs = float(np.percentile(db, 95)) if n else -100.0
    return _judge(measures, loud_dbfs, float(active.sum() * WINDOW_S), limits)


def _judge(m: dict[str, Any], loud_dbfs: float, active_s: float, limits: Limits) -> QualityReport:
    def reject(code: RejectCode, message: str) -> QualityReport:
        return QualityReport(verdict="reject", code=code, message=message, **m)

    speech_s = m["speech_s"]
    if loud_dbfs < limits.min_loud_dbfs:
        return reject(
            "too_quiet",
            f"The recording is nearly silent (its loudest parts are at {loud_dbfs:.0f} dBFS). "
            "Move closer to the microphone or raise its input level, and record again.",
        )
    if m["clipping_ratio"] > limits.max_clipping:
        return reject(
            "clipped",
            f"{m['clipping_ratio']:.1%} of the speech is clipped (distorted at full scale). "
            "Lower the microphone gain or speak further from it, and record again.",
        )
    if (
        active_s >= limits.music_min_active_s
        and m["voiced_share"] < limits.music_max_voiced
        and m["flatness"] < limits.music_max_flatness
    ):
        return reject(
            "music",
            f"This sounds like music, not speech (only {m['voiced_share']:.0%} of the sound is voice). "
            "Record yourself speaking, with no music playing.",
        )
    if speech_s and m["loudness_dbfs"] < limits.min_speech_dbfs:
        return reject(
            "too_quiet",
            f"The speech is too quiet ({m['loudness_dbfs']:.0f} dBFS). "
            "Move closer to the microphone or raise its input level, and record again.",
        )
    if not speech_s:
        return reject("too_short", "No speech was found in the recording. Record yourself reading a few sentences.")
    if speech_s < limits.min_speech_s:
        return reject(
            "too_short",
            f"Only {speech_s:.1f} s of speech was found; at least {limits.min_speech_s:g} s is needed. "
            "Record a longer sample: read a few sentences aloud.",
        )
    if speech_s > limits.max_speech_s:
        return reject(
            "too_long",
            f"{speech_s:.1f} s of speech was found; at most {limits.max_speech_s:g} s is used. "
            "Trim the recording to your best 10 to 30 seconds.",
        )
    warnings = []
    if m["snr_db"] < limits.noisy_snr_db:
        warnings.append(f"background noise is high (SNR {m['snr_db']:.0f} dB): a quieter room gives a better clone")
    message = f"Accepted: {speech_s:.1f} s of clear speech."
    return QualityReport(verdict="accept", code=None, message=message, warnings=warnings, **m)


def _mean_db(db: _Float) -> float:
    if not len(db):
        return -100.0
    return float(10.0 * np.log10(np.maximum(np.mean(10.0 ** (db / 10.0)), 1e-10)))


def _peak_dbfs(pcm: PCM16) -> float:
    peak = int(np.abs(pcm.astype(np.int32)).max()) if len(pcm) else 0
    return float(20.0 * np.log10(max(peak, 1) / 32768.0))


def trimmed(decoded: Decoded, report: QualityReport) -> PCM16:
    """The 24 kHz reference cut to the report's speech span."""
    start, end = report.trim_s
    return decoded.reference[round(start * REFERENCE_RATE) : round(end * REFERENCE_RATE)]
