"""The eval set's clips as the wake-word evaluation sees them: manifest rows plus where the voice ends.

A clip's `voiced_end_s` follows the eval README's rule (the end of the last 20 ms frame whose
energy is within 35 dB of the clip's loudest frame), with one addition for clips recorded over
a noise floor (the wyoming-openwakeword clips never drop 35 dB below their peak): a frame must
also be 15 dB above the floor, the clip's 10th-percentile frame energy.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.errors import InputError
from voxloop.pipeline.frames import PCM16

SAMPLE_RATE = 16000
FRAME_S = 0.02
BELOW_PEAK_DB = 35.0
ABOVE_FLOOR_DB = 15.0
FLOOR_PERCENTILE = 10
WAKE_CATEGORY = "wakeword"
# Audio in which no wake word is said: every clip of these counts toward false accepts.
NON_WAKE_CATEGORIES = ("music", "noise", "silence", "utterance", "speech_long", "speech_notext")


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    path: Path
    category: str
    duration_s: float
    phrase: str  # the normalised transcript: for a wake-word clip, the word said
    voiced_end_s: float | None  # wake-word clips only


def load_clips(eval_dir: Path, ids: Collection[str] | None = None) -> list[Clip]:
    """The wake-word and non-wake clips of the manifest (all of them, or those named in `ids`)."""
    rows = _manifest(eval_dir)
    wanted = [r for r in rows if r["category"] in (WAKE_CATEGORY, *NON_WAKE_CATEGORIES)]
    if ids is not None:
        unknown = sorted(set(ids) - {r["id"] for r in wanted})
        if unknown:
            raise InputError(f"no wake-word or non-wake clip with id {unknown} in {eval_dir / 'manifest.tsv'}")
        wanted = [r for r in wanted if r["id"] in ids]
    return [_clip(eval_dir, row) for row in wanted]


def read_clip(clip: Clip) -> PCM16:
    pcm, rate = read_wav(clip.path)
    if rate != SAMPLE_RATE:
        raise InputError(f"{clip.path} is {rate} Hz; the eval set is 16 kHz (rebuild it, or resample the file)")
    return pcm


def voiced_end_s(pcm: PCM16, sample_rate: int = SAMPLE_RATE) -> float:
    """Where the voice ends: the end of the last 20 ms frame loud enough to be voice (see above)."""
    energy = frame_energy_db(pcm, round(FRAME_S * sample_rate))
    if len(energy) == 0:
        raise InputError("the clip is shorter than one 20 ms frame: it holds no wake word")
    floor = float(np.percentile(energy, FLOOR_PERCENTILE))
    loud = np.nonzero(energy > max(float(energy.max()) - BELOW_PEAK_DB, floor + ABOVE_FLOOR_DB))[0]
    last = int(loud[-1]) if len(loud) else len(energy) - 1  # a flat clip: no end to tell
    return round((last + 1) * FRAME_S, 6)


def frame_energy_db(pcm: PCM16, frame: int) -> np.ndarray:
    count = len(pcm) // frame
    frames = np.asarray(pcm[: count * frame], dtype=np.float64).reshape(count, frame)
    return np.asarray(10 * np.log10(np.mean(frames**2, axis=1) + 1e-9))


def _manifest(eval_dir: Path) -> list[dict[str, str]]:
    path = eval_dir / "manifest.tsv"
    if not path.is_file():
        raise InputError(f"no eval set at {eval_dir}: {path.name} is missing; pass --eval-dir DIR (../shared/eval)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _clip(eval_dir: Path, row: dict[str, str]) -> Clip:
    clip = Clip(
        id=row["id"],
        path=eval_dir / row["file"],
        category=row["category"],
        duration_s=float(row["duration_s"]),
        phrase=row["transcript_norm"].strip().lower(),
        voiced_end_s=None,
    )
    if clip.category != WAKE_CATEGORY:
        return clip
    return dataclasses.replace(clip, voiced_end_s=voiced_end_s(read_clip(clip)))
