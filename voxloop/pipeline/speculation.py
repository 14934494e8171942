"""Speculative replies: answer the early transcript while the end-of-turn silence runs.

The VAD announces a pause `vad.speculate_ms` into the silence; the STT transcribes it at once.
With `vad.speculative_reply` on, the LLM, chunker and TTS then answer those words straight
away, while the hangover is still deciding whether the user has finished. The reply's output
is held at the graph's end (ReplyHold) until the turn is decided:

    the user goes on talking  → the speculation is dropped: its epoch is flushed, nothing was sent
    the turn ends, same words → confirmed: the end of speech and the final transcript, then the held
                                reply, go out at once
    the turn ends, new words  → dropped, and the final transcript is answered as usual

So the reply is usually ready when the endpoint comes, and voice-to-voice latency is the
longer of the hangover and the pipeline, rather than their sum. The cost is the work thrown
away when a pause was not the end: at most one pause's worth of LLM and TTS time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from voxloop.pipeline.frames import AudioOutput, Frame, Interrupt, ReplyChunk, ReplyDone, ReplyText

SPECULATION_DROPPED = "speculation_dropped"  # the reason of the Interrupt that flushes a dropped speculation

# What a reply sends to the output; everything else (partial transcripts, errors) passes.
HELD_FRAMES = (ReplyText, ReplyChunk, AudioOutput, ReplyDone)

# The marks a speculative reply sets ahead of the endpoint, cleared when it is dropped.
REPLY_MARKS = ("llm_first_token", "first_chunk", "tts_first_audio")


@dataclass(slots=True)
class Speculation:
    """A reply being prepared for the latest pause of turn `turn_id`, its frames of epoch `epoch`."""

    turn_id: int
    epoch: int
    confirmed: tuple[Frame, ...] | None = None  # when the turn ended with the same words: what goes ahead


@dataclass(slots=True, kw_only=True)
class SpeculationConfirmed(Frame):
    """Wakes the output reader: the held reply of `speculation` may go (a control frame, so it
    overtakes queued data)."""

    speculation: Speculation
    control: ClassVar[bool] = True
    scoped: ClassVar[bool] = False


class ReplyHold:
    """Holds a speculative reply's output until its turn is confirmed; used by Graph.frames()."""

    def __init__(self) -> None:
        self._held: list[Frame] = []

    def through(self, frame: Frame, speculation: Speculation | None, epoch: int) -> list[Frame]:
        """The frames to send now, given `frame` just read from the graph's output."""
        if isinstance(frame, Interrupt):  # whatever is held belongs to an older epoch now
            self._held.clear()
            # Nothing of a dropped speculation left the server: the client need not know of it.
            return [] if frame.reason == SPECULATION_DROPPED else [frame]
        if isinstance(frame, SpeculationConfirmed):
            ahead = list(frame.speculation.confirmed or ())
            if frame.speculation is not speculation:
                # A barge-in came before this reader did: the reply is gone, the user's words are news.
                return ahead
            released = [*ahead, *(f for f in self._held if f.epoch == epoch)]
            self._held.clear()
            return released
        if speculation is not None and speculation.confirmed is None and self._holds(frame, speculation):
            self._held.append(frame)
            return []
        return [frame]

    @staticmethod
    def _holds(frame: Frame, speculation: Speculation) -> bool:
        return isinstance(frame, HELD_FRAMES) and frame.epoch == speculation.epoch
