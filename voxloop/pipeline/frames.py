"""The frames that flow through the stage graph: a dozen flat dataclasses.

Every frame carries the session it belongs to, the user turn it serves, the session epoch it
was made in, and a monotonic timestamp. Frames are made by `Session.make`, which fills those
four fields, so a stage only names what is new.

Two class-level flags drive the runner:
- `control`: the frame overtakes queued data (interrupt, error).
- `scoped`: the frame belongs to its epoch; once the session is interrupted (epoch bumped),
  scoped frames of older epochs are dropped and work on them is cancelled. Input audio is
  not scoped: the user's voice is never thrown away by a barge-in it caused.

And one per frame: `reported` frames (the user's speech start and end, their final words) are
news for the client whatever became of the work on them: a stale one is not processed, but
still goes on to the output, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

PCM16 = npt.NDArray[np.int16]
"""Mono 16-bit PCM samples."""

Float32Audio = npt.NDArray[np.float32]
"""Mono float samples in [-1, 1]."""


def _no_audio() -> PCM16:
    return np.zeros(0, dtype=np.int16)


@dataclass(slots=True, kw_only=True)
class Frame:
    session_id: str = ""
    turn_id: int = 0
    epoch: int = 0
    t_ns: int = 0

    control: ClassVar[bool] = False
    scoped: ClassVar[bool] = True

    @property
    def reported(self) -> bool:
        """Does the client hear of this frame even after a new epoch dropped the work on it?"""
        return False


# --- input side -----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class AudioInput(Frame):
    """A slice of the user's microphone audio, 16 kHz mono PCM16 (the graph's inner format)."""

    pcm: PCM16 = field(default_factory=_no_audio)
    scoped: ClassVar[bool] = False


@dataclass(slots=True, kw_only=True)
class EndOfInput(Frame):
    """The input stream ended (a file ran out, a client closed its microphone)."""

    scoped: ClassVar[bool] = False


@dataclass(slots=True, kw_only=True)
class WakeWordDetected(Frame):
    """A wake word was heard; `audio_end_s` is where it was detected in the input stream, `woke`
    says whether it woke the session (else the session was awake already)."""

    word: str = ""
    score: float = 0.0
    audio_end_s: float = 0.0
    woke: bool = False
    scoped: ClassVar[bool] = False


@dataclass(slots=True, kw_only=True)
class SpeechStarted(Frame):
    """The VAD heard the user start speaking; `audio_offset_s` is where, in the input stream."""

    audio_offset_s: float = 0.0

    @property
    def reported(self) -> bool:
        return True


@dataclass(slots=True, kw_only=True)
class SpeechEnded(Frame):
    """The VAD decided the utterance is over. `audio` holds it, pre-roll included.

    `speech_end_ns` is the clock time at which the last voiced sample arrived, which is
    earlier than `t_ns` (the decision) by the silence hangover. `final` is False for a
    speculative end: the user paused and the hangover is still running, so the STT may start
    early; a final end with the same `speech_end_ns` follows unless the user speaks again.
    """

    audio: PCM16 = field(default_factory=_no_audio)
    speech_end_ns: int = 0
    speech_end_s: float = 0.0  # the last voiced sample's place in the VAD's input stream
    final: bool = True

    @property
    def reported(self) -> bool:
        return self.final  # a pause (not final) is the STT's business only


@dataclass(slots=True, kw_only=True)
class Transcript(Frame):
    """What the user said. `final` is False for partial (speculative) transcripts."""

    text: str = ""
    final: bool = True
    language: str = ""

    @property
    def reported(self) -> bool:
        return self.final  # a stale early guess is no news


# --- reply side -----------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Respond(Frame):
    """Reply to the conversation so far: sent by a client that takes turns by hand."""

    instructions: str = ""


@dataclass(slots=True, kw_only=True)
class ReplyText(Frame):
    """A piece of the assistant's reply as the LLM streams it."""

    text: str = ""


@dataclass(slots=True, kw_only=True)
class ReplyChunk(Frame):
    """A speakable piece of the reply (a clause or sentence) from the chunker."""

    text: str = ""
    index: int = 0


@dataclass(slots=True, kw_only=True)
class AudioOutput(Frame):
    """Synthesised reply audio. `chunk_index` ties it to the ReplyChunk it speaks."""

    pcm: PCM16 = field(default_factory=_no_audio)
    sample_rate: int = 16000
    chunk_index: int = 0
    chunk_text: str = ""

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate


@dataclass(slots=True, kw_only=True)
class ReplyDone(Frame):
    """The reply is complete; passes LLM → chunker → TTS → sink. `text` is the whole reply.
    `cut_off`: the model stopped at max_tokens, so the chunker drops the unfinished sentence."""

    text: str = ""
    cut_off: bool = False


# --- control lane ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Interrupt(Frame):
    """The session was interrupted (barge-in, cancel): flush everything of older epochs."""

    reason: str = ""
    control: ClassVar[bool] = True
    scoped: ClassVar[bool] = False


@dataclass(slots=True, kw_only=True)
class ErrorFrame(Frame):
    """A stage failed. `fatal` errors end the session; others cost one turn at most."""

    stage: str = ""
    message: str = ""
    fatal: bool = False
    control: ClassVar[bool] = True
    scoped: ClassVar[bool] = False
