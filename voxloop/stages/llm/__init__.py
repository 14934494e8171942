"""The LLM stage: answers the user's final transcript with a streamed reply.

    ChatBackend      the one-method interface a model sits behind: stream(messages) -> deltas
    load_llm         the backend that settings.backend names (embedded llama.cpp, or openai)
    build_messages   system prompt + the recent history, the pure core of a request
    LlmStage         the adapter: Transcript in, ReplyText deltas and a ReplyDone out

The user's words are expected in `session.history` already (Session.user_said, called where
the final transcript is made); the stage reads history and never writes it: the session
commits the reply when its ReplyDone reaches the output, or what was played of it on barge-in.

A server backend (openai) that fails before the reply's first token is retried with backoff,
all attempts within llm.turn_deadline_s (see retry.py); each retry is logged (`llm_retry`) and
noted in the turn's trace (`notes.llm_retries`, one reason per retry). When the backend still
fails for this turn (TransientError: server down, timeout, or a failure after words were
already spoken, which is never retried), the stage finishes the reply with a short spoken
apology before re-raising, so the user hears something and the graph reports the error.
Users prefer that to silence.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Protocol

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import TransientError
from voxloop.pipeline.frames import Frame, ReplyDone, ReplyText, Respond, SpeechStarted, Transcript
from voxloop.pipeline.session import Message, Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.text import whole_sentences
from voxloop.pipeline.workers import Priority, work_priority
from voxloop.stages.llm.deltas import CutOff
from voxloop.stages.llm.retry import Retry, RetryPolicy, reason_of, stream_with_retries

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

log = logging.getLogger(__name__)

FIRST_AUDIO_WAIT_S = 1.0  # the longest the model waits for the first clause's audio (a slow cloud voice)
FALLBACK_REPLY = "Sorry, I can't answer right now."


class ChatBackend(Protocol):
    name: str

    def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float, conversation: str | None = None
    ) -> AsyncIterator[str]:
        """The reply as text deltas. Leaving the iteration early stops generation. `conversation`
        (the session's id) lets a server that keeps a cache per conversation keep this one's."""
        ...

    async def prefill(
        self,
        messages: list[dict[str, str]],
        *,
        after: list[dict[str, str]] | None = None,
        conversation: str | None = None,
    ) -> None:
        """Read a prompt a reply will probably start from into the model's cache, so that the
        reply's first token comes sooner. Called with the early transcript while the
        end-of-turn silence runs; a backend without a cache it controls does nothing.
        `after`: only if the model's last request was that prompt (one cache shared by every
        conversation: one that another conversation has used since is not worth refilling)."""
        ...

    def busy(self) -> bool:
        """Is the model answering another request now? A speculative reply is not worth making
        then: it would wait its turn, or hold up a reply someone is waiting for."""
        ...

    async def close(self) -> None: ...


def load_llm(settings: LlmSettings, store: AssetStore) -> ChatBackend:
    """The backend settings.backend names, loaded (blocking for the embedded model: call at startup)."""
    if settings.backend == "openai":
        from voxloop.stages.llm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(settings)
    from voxloop.stages.llm.embedded import EmbeddedLlamaBackend

    return EmbeddedLlamaBackend.load(settings, store)


def history_start(length: int, max_history: int) -> int:
    """Where the window over `length` messages starts: a multiple of half the window (see build_messages)."""
    if length <= max_history:
        return 0
    step = max(1, max_history // 2)
    return -(-(length - max_history) // step) * step  # the overflow, rounded up to whole steps


def build_messages(
    system_prompt: str, history: Sequence[Message], max_history: int, user_text: str
) -> list[dict[str, str]]:
    """The system prompt, then at most `max_history` recent messages, ending with the user's turn.

    The window's start moves in steps of half of `max_history`, not one message per turn: a
    prompt that keeps its beginning lets llama.cpp (embedded or a server) reuse its cache of the
    earlier turns, where a window sliding by one message makes it read the whole prompt again
    every turn (1-2 s here once a conversation is long). So the window holds between half of
    `max_history` and all of it. If history does not end with a user message (a speculative
    reply, a prefill), `user_text` is added as one and counted in the window, so those requests
    start with the same window as the final one and share its cache.
    """
    conversation = list(history)
    if user_text and (not conversation or conversation[-1].role != "user"):
        conversation.append(Message("user", user_text))
    if max_history > 0:
        recent = conversation[history_start(len(conversation), max_history) :]
    else:  # no history kept: only the question
        recent = [m for m in conversation[-1:] if m.role == "user"]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages.extend(message.as_dict() for message in recent)
    return messages


class LlmStage(StageBase):
    """Final transcripts in; ReplyText deltas and one ReplyDone (the whole reply) out."""

    name = "llm"
    handles: tuple[type[Frame], ...] = (Transcript, Respond, SpeechStarted)

    def __init__(self, session: Session, settings: LlmSettings, backend: ChatBackend) -> None:
        self.session = session
        self.settings = settings
        self.backend = backend
        # The embedded model fails for reasons a second try would not fix (the prompt is too long).
        self.retry_policy = RetryPolicy.from_settings(settings) if settings.backend == "openai" else None

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, SpeechStarted):
            yield frame
            if self.session.auto_respond and self._prefills_history():
                await self._prefill_history()
            return
        if isinstance(frame, Transcript):
            yield frame  # the user's words go on to the transport at once, ahead of the reply
            if not frame.text.strip() or not self.session.auto_respond:
                return  # manual turns wait for Respond
            speculative = not frame.final and self.session.speculating(frame)
            if speculative and self.backend.busy():
                speculative = not self.session.forgo_speculation()  # unless the turn already ended
            if not (frame.final or speculative):
                await self._prefill(frame.text.strip())
                return
            # A speculative reply (pipeline/speculation.py) answers the early transcript, not yet in history.
            question = self.session.question(frame.text) if speculative else frame.text.strip()
        elif isinstance(frame, Respond):
            self.session.reply_requested()
            question, speculative = "", False  # the conversation so far is the question
        else:
            return
        history = list(self.session.history)  # as asked: the session appends to its own list meanwhile
        if question and not speculative and (not history or history[-1].role != "user"):
            log.warning("final transcript not in history", extra={"event": "llm_transcript_not_in_history"})
        system_prompt = self._system_prompt()
        if isinstance(frame, Respond) and frame.instructions:
            system_prompt = frame.instructions
        messages = build_messages(system_prompt, history, self.settings.max_history_messages, question)
        parts: list[str] = []
        cut_off = False
        deltas = self._stream(messages)
        try:
            async for delta in deltas:
                cut_off = cut_off or isinstance(delta, CutOff)
                if not delta:
                    continue
                if not parts:
                    self.session.mark("llm_first_token")
                parts.append(delta)
                yield self.session.make(ReplyText, text=delta)
                await self._first_audio_first()
        except TransientError as exc:
            reason = reason_of(exc)
            self.session.trace.notes["llm_fallback"] = reason
            log.warning(
                "llm failed, apologising",
                extra={
                    "event": "llm_fallback",
                    "backend": self.backend.name,
                    "error": type(exc).__name__,
                    "reason": reason,
                    "after_content": bool(parts),
                },
            )
            # A newline ends whatever sentence was cut off, so the apology is a chunk of its own.
            apology = ("\n" if parts else "") + FALLBACK_REPLY
            yield self.session.make(ReplyText, text=apology)
            yield self.session.make(ReplyDone, text=f"{''.join(parts).strip()} {FALLBACK_REPLY}".strip())
            raise
        finally:
            await _close(deltas)  # stop generation now, not when the iterator is collected
        reply = "".join(parts).strip()
        if cut_off:  # what will be spoken of it: the whole sentences (see ChunkerStage)
            self.session.trace.notes["reply_cut_off"] = True
            reply = whole_sentences(reply)
        yield self.session.make(ReplyDone, text=reply, cut_off=cut_off)
        if self.settings.backend == "embedded" or self._prefills_history():
            said = [Message("user", question)] if speculative else []
            await self._prefill_next_turn(messages, [*history, *said, Message("assistant", reply)])

    def _system_prompt(self) -> str:
        return self.session.instructions or self.settings.system_prompt

    def _stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        def start() -> AsyncIterator[str]:
            max_tokens = self.session.max_output_tokens or self.settings.max_tokens
            return self.backend.stream(
                messages,
                max_tokens=max_tokens,
                temperature=self.settings.temperature,
                conversation=self.session.id,
            )

        if self.retry_policy is None:
            return start()
        return stream_with_retries(start, self.retry_policy, on_retry=self._retrying)

    def _retrying(self, retry: Retry) -> None:
        self.session.trace.notes.setdefault("llm_retries", []).append(retry.reason)
        log.warning(
            "llm attempt failed, retrying",
            extra={
                "event": "llm_retry",
                "backend": self.backend.name,
                "attempt": retry.attempt,
                "reason": retry.reason,
                "delay_ms": round(retry.delay_s * 1000),
            },
        )

    async def _first_audio_first(self) -> None:
        """Once the first clause is out, pause until the TTS has made its audio: on a small CPU the
        model's next tokens would slow down the synthesis the user is waiting for, while they
        are not needed before the first clause has been spoken (the embedded model stops
        within a few tokens when it is not read; a server's stream just waits in the socket)."""
        marks = self.session.trace.marks
        if self.settings.first_audio_first and "first_chunk" in marks and "tts_first_audio" not in marks:
            await self.session.wait_for_mark("tts_first_audio", FIRST_AUDIO_WAIT_S)

    def _prefills_history(self) -> bool:
        """Prefill at speech start (and after a reply): only a server with llm.server_prefill (a
        cloud API would bill it). Not the embedded model at speech start: with one cache and one
        thread for all sessions, that made barge-ins miss their reply in the test suite (left for
        later); it is prefilled after a reply only (`_prefill_next_turn`)."""
        return self.settings.backend == "openai" and self.settings.server_prefill

    async def _prefill_history(self) -> None:
        """The user has started a turn: read the conversation so far into the server's cache now,
        while they speak. Its window is the one the turn's request will have, so after a window
        shift, or a reply cut short in the history, the whole prompt is not read again after
        the endpoint."""
        messages = self._next_window(self.session.history)
        if messages:
            await self.backend.prefill(messages, conversation=self.session.id)

    async def _prefill_next_turn(self, asked: list[dict[str, str]], history: list[Message]) -> None:
        """After a reply: read the next turn's window now, while the reply plays, if it will not
        start where `asked` did. The window moves every few turns, and then the next request
        would read the whole conversation again after the endpoint (~1.2 s on 2 cores late in a
        conversation), or, with a server, at the next speech start, where a short utterance
        does not cover it (1.7 s with four users); when it stays, the cache already holds it."""
        messages = self._next_window(history)
        if not messages or messages[: len(asked)] == asked:
            return  # the same window, one exchange longer (or no history kept)
        with work_priority(Priority.AHEAD):  # after any live request of another session
            await self.backend.prefill(messages, after=asked, conversation=self.session.id)

    def _next_window(self, history: list[Message]) -> list[dict[str, str]]:
        """The start of the next turn's request after `history`: its window counts the user's
        coming message, which is left out."""
        upcoming = [*history, Message("user", "")]
        return build_messages(self._system_prompt(), upcoming, self.settings.max_history_messages, "")[:-1]

    async def _prefill(self, partial: str) -> None:
        """The reply to the early transcript will most likely be asked for: warm the model up."""
        messages = build_messages(
            self._system_prompt(), self.session.history, self.settings.max_history_messages, partial
        )
        await self.backend.prefill(messages, conversation=self.session.id)


async def _close(iterator: AsyncIterator[str]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
