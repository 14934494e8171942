"""One Session per connection: conversation history, turn and epoch counters, state, trace.

The session is the authority on *which* turn and epoch a frame belongs to (`make` stamps
them) and on turn-taking policy: a user who starts speaking while the assistant is thinking
or speaking interrupts it (barge-in). `interrupt()` bumps the epoch, asks the graph to cancel
work of older epochs, and cuts the assistant's pending reply to what was actually emitted.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from voxloop.pipeline.clock import Clock, MonotonicClock
from voxloop.pipeline.frames import PCM16, AudioOutput, Frame, ReplyDone
from voxloop.pipeline.speculation import REPLY_MARKS, SPECULATION_DROPPED, Speculation
from voxloop.pipeline.trace import TurnTrace

F = TypeVar("F", bound=Frame)

# Cut-off words carried into the next transcription, at most (the newest kept): past Whisper's 30 s
# window the transcription goes window by window, and on a server too busy to transcribe before
# each barge-in the carry would otherwise grow without bound.
MAX_CARRIED_SAMPLES = 30 * 16000

InterruptHandler = Callable[[int, str], Awaitable[None]]
ConfirmHandler = Callable[[Speculation], Awaitable[None]]
StateListener = Callable[["State"], None]


class State(enum.StrEnum):
    ASLEEP = "asleep"  # kiosk mode: only the wake word is listened for
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


@dataclass(slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class Session:
    def __init__(self, *, session_id: str | None = None, clock: Clock | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self.clock: Clock = clock or MonotonicClock()
        self.history: list[Message] = []
        self.epoch = 0
        self.turn_id = 0
        self._state = State.LISTENING
        self._state_listeners: list[StateListener] = []
        self.instructions: str | None = None  # a client's system prompt, replacing the configured one
        self.max_output_tokens: int | None = None  # a client's cap on reply length; None: llm.max_tokens
        self.auto_respond = True  # False: reply only when asked (manual turns, create_response off)
        self.voice: str | None = None  # the voice the client chose (session.audio.output.voice); None: the default
        self.trace = TurnTrace(self.id, 0)
        self.finished_traces: list[TurnTrace] = []
        self.interrupts = 0
        self.user_speaking = False  # between the VAD's speech start and its endpoint
        # The speech_end_ns of the pause whose early transcript reads as a finished sentence: the
        # STT sets it, the VAD then ends the turn after the shorter, eager hangover.
        self.finished_sentence_ns: int | None = None
        self.speculative_reply = False  # answer early transcripts during the hangover (pipeline/speculation.py)
        self.pause_ns: int | None = None  # the speech end of the pause the VAD announced, until voice comes back
        self.speculation: Speculation | None = None
        self._flush_handlers: list[InterruptHandler] = []  # the graph: drops the work of older epochs
        self._interrupt_handlers: list[InterruptHandler] = []
        self._confirm_handlers: list[ConfirmHandler] = []
        self._mark_waiters: dict[str, asyncio.Event] = {}
        self._emitted: list[str] = []  # chunks of the current reply that reached the output
        self._emitted_chunk = -1
        self._unanswered: str = ""  # user text whose reply was cut before it made a sound
        self._untranscribed: PCM16 | None = None  # the ended utterance, until its final transcript is made
        self._cut_off_audio: PCM16 | None = None  # utterances a barge-in cut off before they were transcribed
        self._awaiting_reply: Message | None = None  # the user message the reply in flight answers

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        if value is not self._state:
            self._state = value
            for listener in self._state_listeners:
                listener(value)

    def on_state(self, listener: StateListener) -> None:
        self._state_listeners.append(listener)

    # -- frames and marks ------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock.now_ns()

    def make(self, frame_type: type[F], **fields: Any) -> F:
        """A new frame of this session's current turn and epoch, stamped now."""
        return frame_type(session_id=self.id, turn_id=self.turn_id, epoch=self.epoch, t_ns=self.now_ns(), **fields)

    def mark(self, name: str, t_ns: int | None = None, *, replace: bool = False) -> None:
        self.trace.mark(name, self.now_ns() if t_ns is None else t_ns, replace=replace)
        waiter = self._mark_waiters.pop(name, None)
        if waiter is not None:
            waiter.set()

    async def wait_for_mark(self, name: str, timeout_s: float) -> bool:
        """Wait until this turn's trace has the mark `name`, at most `timeout_s`; True if it has."""
        if name in self.trace.marks:
            return True
        waiter = self._mark_waiters.setdefault(name, asyncio.Event())
        try:
            async with asyncio.timeout(timeout_s):
                await waiter.wait()
        except TimeoutError:
            return False
        return True

    # -- turn-taking -----------------------------------------------------------------------

    @property
    def responding(self) -> bool:
        return self.state in (State.THINKING, State.SPEAKING)

    async def user_started_speaking(self) -> None:
        """A new user turn begins; a reply still in flight is interrupted (barge-in)."""
        self.user_speaking = True  # set first: stages cancelled by the barge-in can tell why
        self.pause_ns = None
        if self.responding:
            self._keep_untranscribed()
            await self.interrupt("barge_in")
        self.turn_id += 1
        self.trace = TurnTrace(self.id, self.turn_id)
        self.state = State.LISTENING

    def user_stopped_speaking(self, speech_end_ns: int, audio: PCM16 | None = None) -> None:
        """The VAD decided the utterance is over; its last voiced sample arrived at `speech_end_ns`.
        `audio` is the utterance, kept until its transcript is made (see `with_cut_off_words`)."""
        self.user_speaking = False
        self._untranscribed = audio
        self.mark("speech_end", speech_end_ns)
        self.mark("endpoint")
        # From here the utterance is being answered: speech now is a barge-in, even before the
        # transcript is final, so a reply can never start while the user is talking.
        self.state = State.THINKING

    def utterance_dropped(self) -> None:
        """The utterance held no words (noise, a cough): nothing will be answered."""
        self._untranscribed = self._cut_off_audio = None
        if self.state is State.THINKING:
            self.state = State.LISTENING

    def user_said(self, text: str) -> str:
        """Record the user's final words; returns the text the reply should answer.

        If the previous reply was cut off before it made a sound, the user was most likely
        still talking after a pause: their earlier words are joined to these.
        """
        text = self.question(text)
        self._unanswered = ""
        self._untranscribed = self._cut_off_audio = None  # the words cut off earlier are in this transcript
        if text:
            self._awaiting_reply = Message("user", text)
            self.history.append(self._awaiting_reply)
        self.state = State.THINKING if text and self.auto_respond else State.LISTENING
        return text

    @property
    def has_cut_off_words(self) -> bool:
        return self._cut_off_audio is not None

    def with_cut_off_words(self, audio: PCM16) -> PCM16:
        """`audio`, after any utterance the user went on from before it was transcribed: its words
        are part of what they are saying now (and under load a transcript can take a while)."""
        if self._cut_off_audio is None:
            return audio
        return np.concatenate([self._cut_off_audio, audio])

    def _keep_untranscribed(self) -> None:
        if self._untranscribed is not None:
            self._cut_off_audio = self.with_cut_off_words(self._untranscribed)[-MAX_CARRIED_SAMPLES:]
            self._untranscribed = None

    def question(self, text: str) -> str:
        """What a reply to `text` answers: with the words of a reply cut off before it made a sound."""
        return " ".join(part for part in (self._unanswered, text.strip()) if part)

    def reply_requested(self) -> None:
        """A client asked for a reply to the conversation so far (manual turns)."""
        self.state = State.THINKING

    def output_sent(self, frame: Frame) -> None:
        """Bookkeeping for a frame that left the graph for the user (speaker, socket, file).

        The first audio of each reply chunk counts the chunk as said (for history on barge-in)
        and the first audio of a turn sets the `first_audio_sent` mark.
        """
        if isinstance(frame, AudioOutput) and frame.epoch == self.epoch:
            self.mark("first_audio_sent")
            if frame.chunk_index != self._emitted_chunk:
                self._emitted_chunk = frame.chunk_index
                self._emitted.append(frame.chunk_text)
            self.state = State.SPEAKING
        elif isinstance(frame, ReplyDone) and frame.epoch == self.epoch:
            self.reply_finished(frame.text)

    def reply_finished(self, text: str) -> None:
        if text.strip():
            self.history.append(Message("assistant", text.strip()))
        self._awaiting_reply = None
        self._reset_reply()
        self._finish_turn()

    def _reset_reply(self) -> None:
        self._emitted.clear()
        self._emitted_chunk = -1

    def _finish_turn(self) -> None:
        if self.trace.marks:
            self.finished_traces.append(self.trace)
        self.state = State.LISTENING

    # -- interruption ----------------------------------------------------------------------

    def on_flush(self, handler: InterruptHandler) -> None:
        """`handler(epoch, reason)` drops the work of older epochs (the graph); called on every new epoch."""
        self._flush_handlers.append(handler)

    def on_interrupt(self, handler: InterruptHandler) -> None:
        """`handler(epoch, reason)` is told of interruptions the user sees (barge-in, cancel), after the flush."""
        self._interrupt_handlers.append(handler)

    async def interrupt(self, reason: str = "cancel") -> None:
        """Cancel the reply in flight: bump the epoch, flush the graph, trim history."""
        self.epoch += 1
        self.speculation = None
        self.interrupts += 1
        said = " ".join(self._emitted).strip()
        self._reset_reply()
        if said:
            self.history.append(Message("assistant", said))
        elif self.history and self.history[-1] is self._awaiting_reply:
            self._unanswered = self.history.pop().content
        self._awaiting_reply = None
        self.trace.notes["interrupted"] = reason
        self._finish_turn()
        for handler in [*self._flush_handlers, *self._interrupt_handlers]:
            await handler(self.epoch, reason)

    # -- speculative replies (pipeline/speculation.py) -----------------------------------------

    def paused(self, speech_end_ns: int) -> None:
        """The VAD announced a pause in the user's speech, whose voice ended at `speech_end_ns`."""
        self.pause_ns = speech_end_ns

    async def voice_resumed(self) -> None:
        """Voice came back after the pause: it was not the end. A reply speculated on it must not
        be heard, nor one begun for it later (its transcript may still be on its way)."""
        self.pause_ns = None
        await self.drop_speculation()

    def begin_speculation(self, pause_ns: int) -> bool:
        """May a reply to the early transcript of the pause that ended at `pause_ns` start now,
        held until the turn ends? Only while that pause lasts: a transcript that comes after the
        user spoke on (a busy Whisper) answers half a question, and would be confirmed by the
        next pause's end of turn in its place."""
        if not (self.speculative_reply and self.auto_respond and self.user_speaking and self.speculation is None):
            return False
        if pause_ns != self.pause_ns:
            return False
        self.speculation = Speculation(self.turn_id, self.epoch)
        return True

    @property
    def _pending(self) -> Speculation | None:
        """The speculation whose turn is not decided yet, if any."""
        s = self.speculation
        return s if s is not None and s.confirmed is None else None

    def speculating(self, frame: Frame) -> bool:
        """Is `frame` the early transcript a speculative reply was begun for?"""
        s = self._pending
        return s is not None and (frame.turn_id, frame.epoch) == (s.turn_id, s.epoch)

    async def drop_speculation(self) -> None:
        """The user went on talking (or said other words): throw the held reply away, unheard."""
        if self._pending is None:
            return
        self.speculation = None
        self.epoch += 1
        self.trace.clear(REPLY_MARKS)
        self.trace.count("speculations_dropped")
        for handler in self._flush_handlers:
            await handler(self.epoch, SPECULATION_DROPPED)

    async def confirm_speculation(self, *ahead: Frame) -> bool:
        """The turn ended with the words the speculative reply answers: let it out, after `ahead`
        (the end of speech, the final transcript). False when no such reply is being prepared:
        the caller then sends those frames on itself."""
        s = self._pending
        if s is None or any((f.turn_id, f.epoch) != (s.turn_id, s.epoch) for f in ahead):
            return False
        s.confirmed = ahead
        self.trace.notes["reply"] = "speculative"
        for handler in self._confirm_handlers:
            await handler(s)
        return True

    def forgo_speculation(self) -> bool:
        """No reply on a guess after all (the model is busy): before any of it was made, so there
        is nothing to flush. False if the turn was already confirmed: then it must be answered."""
        if self._pending is None:
            return False
        self.speculation = None
        self.trace.count("speculations_forgone")
        return True

    def on_confirm(self, handler: ConfirmHandler) -> None:
        self._confirm_handlers.append(handler)

    def speculation_released(self) -> None:
        """The held reply left the graph: from here it is an ordinary reply."""
        self.speculation = None

    def truncate_reply(self, played_text: str) -> None:
        """The client reports it played only `played_text` of the last reply."""
        if self.history and self.history[-1].role == "assistant":
            if played_text.strip():
                self.history[-1].content = played_text.strip()
            else:
                self.history.pop()

    def forget(self) -> None:
        """Clear the conversation (kiosk idle reset): the next person starts fresh."""
        self.history.clear()
        self._unanswered = ""
        self._awaiting_reply = None
