"""Per-turn latency marks and what they mean.

A turn is timed by monotonic marks, each set once (the first time it happens):

    speech_end        the last voiced sample of the user's utterance arrived
    endpoint          the VAD decided the user had finished
    stt_final         the final transcript was ready
    llm_first_token   the LLM streamed its first token
    first_chunk       the chunker released the first speakable clause
    tts_first_audio   the TTS produced the first audio of the reply
    first_audio_sent  that audio left the server (or reached the output sink)
    playback_start    the client started playing it (reported by the client)

and, when there was speculative work, two marks off the main line (the last pause wins):

    speech_pause      the VAD announced a pause (`vad.speculate_ms` of silence): STT starts early
    stt_speculative   the early transcript of that pause was ready

Voice-to-voice latency is speech_end → first_audio_sent. Each step's share is the time from
the latest earlier mark to its own: a step that was done before the ones ahead of it (a
speculative reply, prepared during the hangover) took no share of the wait, so the shares
always add up to the voice-to-voice time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TURN_MARKS: tuple[str, ...] = (
    "speech_end",
    "endpoint",
    "stt_final",
    "llm_first_token",
    "first_chunk",
    "tts_first_audio",
    "first_audio_sent",
    "playback_start",
)
SPECULATIVE_MARKS: tuple[str, ...] = ("speech_pause", "stt_speculative")
MARKS = TURN_MARKS + SPECULATIVE_MARKS

# The share of the voice-to-voice time each step takes: (label, from mark, to mark).
SPANS: tuple[tuple[str, str, str], ...] = (
    ("endpoint_delay", "speech_end", "endpoint"),
    ("stt", "endpoint", "stt_final"),
    ("llm_first_token", "stt_final", "llm_first_token"),
    ("first_chunk", "llm_first_token", "first_chunk"),
    ("tts_first_audio", "first_chunk", "tts_first_audio"),
    ("send", "tts_first_audio", "first_audio_sent"),
    ("playback", "first_audio_sent", "playback_start"),
)


@dataclass(slots=True)
class TurnTrace:
    session_id: str
    turn_id: int
    marks: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def mark(self, name: str, t_ns: int, *, replace: bool = False) -> bool:
        """Set a mark once (later calls are ignored, unless `replace`). Returns True if set."""
        if name not in MARKS:
            raise ValueError(f"unknown trace mark {name!r}; known marks: {', '.join(MARKS)}")
        if name in self.marks and not replace:
            return False
        self.marks[name] = t_ns
        return True

    def count(self, note: str) -> None:
        """Add one to the counter note `note`."""
        self.notes[note] = self.notes.get(note, 0) + 1

    def clear(self, names: tuple[str, ...]) -> None:
        """Forget marks of work that was thrown away (a dropped speculative reply)."""
        for name in names:
            self.marks.pop(name, None)

    def ms(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return (self.marks[end] - self.marks[start]) / 1e6
        return None

    @property
    def voice_to_voice_ms(self) -> float | None:
        return self.ms("speech_end", "first_audio_sent")

    def spans_ms(self) -> dict[str, float]:
        """Each step's share of the wait in ms, for the steps whose two marks are both set."""
        spans = {}
        latest = 0  # the latest mark so far along the main line
        for label, start, end in SPANS:
            if start in self.marks:
                latest = max(latest, self.marks[start])
                if end in self.marks:
                    spans[label] = max(0, self.marks[end] - latest) / 1e6
        return spans

    def to_dict(self) -> dict[str, Any]:
        origin = self.marks.get("speech_end", min(self.marks.values(), default=0))
        return {
            "session_id": self.session_id,
            "turn_id": self.turn_id,
            "marks_ms": {name: (t - origin) / 1e6 for name, t in self.marks.items()},
            "spans_ms": self.spans_ms(),
            "voice_to_voice_ms": self.voice_to_voice_ms,
            **({"notes": self.notes} if self.notes else {}),
        }

    def table(self) -> str:
        """A plain-text table of the turn's steps, for the terminal."""
        rows = [f"{label:<18}{value:>9.0f} ms" for label, value in self.spans_ms().items()]
        total = self.voice_to_voice_ms
        if total is not None:
            rows.append(f"{'voice-to-voice':<18}{total:>9.0f} ms")
        return "\n".join(rows)
