"""Conversation recordings from ../shared/eval: their segments, excerpts, and endpoint scoring."""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.pipeline.audio import read_wav, resample
from voxloop.pipeline.errors import InputError
from voxloop.pipeline.frames import PCM16

RATE = 16000
SPOKEN = ("speech", "wakeword")
HOLD_S = 1.0  # a pause shorter than this inside a reading is the speaker holding the floor


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str
    start_s: float
    end_s: float
    voiced_end_s: float
    transcript: str

    @property
    def spoken(self) -> bool:
        return self.kind in SPOKEN


@dataclass(frozen=True, slots=True)
class Conversation:
    conv_id: str
    pcm: PCM16  # 16 kHz mono
    segments: tuple[Segment, ...]

    def excerpt(self, start_s: float, duration_s: float) -> Conversation:
        """The segments that start in [start_s, start_s + duration_s), re-timed to start at 0."""
        chosen = [s for s in self.segments if start_s <= s.start_s < start_s + duration_s]
        if not any(s.spoken for s in chosen):
            raise InputError(f"{self.conv_id}: no speech starts within {start_s}..{start_s + duration_s} s")
        origin = chosen[0].start_s
        shifted = tuple(
            Segment(s.kind, s.start_s - origin, s.end_s - origin, s.voiced_end_s - origin, s.transcript) for s in chosen
        )
        pcm = self.pcm[int(origin * RATE) : int(chosen[-1].end_s * RATE)]
        return Conversation(self.conv_id, pcm, shifted)

    def audio(self, segment: Segment) -> PCM16:
        return self.pcm[int(segment.start_s * RATE) : int(segment.end_s * RATE)]

    @property
    def reference(self) -> str:
        return " ".join(s.transcript for s in self.segments if s.spoken)


def load_conversation(eval_dir: Path, conv_id: str) -> Conversation:
    table = eval_dir / "conversations.tsv"
    wav = eval_dir / "conversations" / f"{conv_id}.wav"
    if not table.is_file() or not wav.is_file():
        raise InputError(f"no conversation {conv_id!r} in {eval_dir}: expected {table} and {wav}; check --eval-dir")
    with table.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["conv_id"] == conv_id]
    segments = tuple(
        Segment(
            kind=r["kind"],
            start_s=float(r["start_s"]),
            end_s=float(r["end_s"]),
            voiced_end_s=float(r["voiced_end_s"] or r["end_s"]),
            transcript=r["transcript"],
        )
        for r in rows
    )
    pcm, rate = read_wav(wav)
    return Conversation(conv_id, resample(pcm, rate, RATE) if rate != RATE else pcm, segments)


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces: what WER is computed on."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split())


@dataclass(frozen=True, slots=True)
class Pause:
    after_s: float  # the voiced end of the speech before the pause (streamed timeline)
    until_s: float  # the start of the next speech
    length_s: float

    @property
    def holds_floor(self) -> bool:
        return self.length_s < HOLD_S


def pauses(speech: list[tuple[float, float, float]]) -> list[Pause]:
    """The pauses between consecutive speech segments, given (start_s, voiced_end_s, end_s) each."""
    out = []
    for (_, voiced_end, end), (next_start, _, _) in itertools.pairwise(speech):
        out.append(Pause(voiced_end, next_start, next_start - end))
    return out


def score_endpoints(speech: list[tuple[float, float, float]], endpoints_s: list[float]) -> dict[str, Any]:
    """False endpoints: the VAD ended the turn inside a pause shorter than HOLD_S, or inside speech.

    `endpoints_s` are the server's audio_end_ms (as seconds) of each speech_stopped. Each is
    matched to the pause it falls in (from the voiced end of one segment to the start of the next,
    with 0.3 s of slack before the voiced end for the VAD's own estimate).
    """
    gaps = pauses(speech)
    ladder = []
    for gap in gaps:
        hit = any(gap.after_s - 0.3 <= e < gap.until_s for e in endpoints_s)
        ladder.append({"pause_s": round(gap.length_s, 3), "holds_floor": gap.holds_floor, "endpointed": hit})
    inside_speech = [
        e for e in endpoints_s if not any(g.after_s - 0.3 <= e < g.until_s for g in gaps) and e < speech[-1][1] - 0.3
    ]
    short = [row for row in ladder if row["holds_floor"]]
    false = sum(1 for row in short if row["endpointed"]) + len(inside_speech)
    return {
        "hold_s": HOLD_S,
        "short_pauses": len(short),
        "false_endpoints": false,
        "false_endpoint_rate": false / max(1, len(short)),
        "endpoints_inside_speech": len(inside_speech),
        "ladder": ladder,
        "definition": (
            f"a false endpoint is a speech_stopped whose audio_end falls in a pause shorter than {HOLD_S} s "
            "between two speech segments (the reader holds the floor), or inside a segment's speech; "
            "rate = false endpoints / pauses shorter than the hold"
        ),
    }


def silence(seconds: float) -> PCM16:
    return np.zeros(round(seconds * RATE), np.int16)
