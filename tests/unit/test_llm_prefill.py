"""The LLM stage warms the model with the early transcript, for the prompt the reply then uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.frames import ReplyDone, SpeechStarted, Transcript
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Message, Session
from voxloop.stages.llm import LlmStage, build_messages


class RecordingBackend:
    name = "recording"

    def __init__(self) -> None:
        self.prefilled: list[list[dict[str, str]]] = []
        self.prefilled_after: list[list[dict[str, str]] | None] = []
        self.asked: list[list[dict[str, str]]] = []
        self.answering_someone_else = False
        self.while_answering: Callable[[], object] = lambda: None

    async def prefill(
        self,
        messages: list[dict[str, str]],
        *,
        after: list[dict[str, str]] | None = None,
        conversation: str | None = None,
    ) -> None:
        self.prefilled.append(messages)
        self.prefilled_after.append(after)

    def busy(self) -> bool:
        return self.answering_someone_else

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        conversation: str | None = None,
    ) -> AsyncIterator[str]:
        self.asked.append(messages)
        self.while_answering()
        yield "It is noon."

    async def close(self) -> None:
        pass


async def test_a_partial_transcript_prefills_exactly_the_prompt_the_final_one_asks() -> None:
    session, backend = Session(), RecordingBackend()
    async with Graph(session, [LlmStage(session, LlmSettings(), backend)]) as graph:
        await session.user_started_speaking()
        await graph.push(session.make(Transcript, text="What time is it?", final=False))
        partial = await graph.output.get()
        assert isinstance(partial, Transcript) and not partial.final  # passed on for display
        session.user_said("What time is it?")
        await graph.push(session.make(Transcript, text="What time is it?", final=True))
        frames = [await graph.output.get() for _ in range(3)]
    assert isinstance(frames[-1], ReplyDone)
    assert backend.prefilled == backend.asked  # the cache holds the whole prompt the reply starts from
    assert backend.asked[0][-1] == {"role": "user", "content": "What time is it?"}


# With a window of 6 messages, the 4th question moves it on by 3: system + the last 3 earlier messages.
# After the 3rd reply the next window moves too, so that reply is followed by a prefill of its own.
@pytest.mark.parametrize(("earlier_turns", "prefilled_messages", "prefills"), [(0, 1, 1), (2, 5, 2), (3, 4, 1)])
async def test_the_start_of_speech_prefills_the_conversation_the_turns_request_begins_with(
    earlier_turns: int, prefilled_messages: int, prefills: int
) -> None:
    session, backend = Session(), RecordingBackend()
    for n in range(earlier_turns):
        session.history += [Message("user", f"question {n}"), Message("assistant", f"answer {n}.")]
    settings = LlmSettings(backend="openai", server_prefill=True, max_history_messages=6)
    async with Graph(session, [LlmStage(session, settings, backend)]) as graph:
        await session.user_started_speaking()
        await graph.push(session.make(SpeechStarted))
        assert isinstance(await graph.output.get(), SpeechStarted)  # passed on at once
        session.user_said("What time is it?")
        await graph.push(session.make(Transcript, text="What time is it?", final=True))
        frames = [await graph.output.get() for _ in range(3)]
        await asyncio.sleep(0.01)
    assert isinstance(frames[-1], ReplyDone)
    [asked] = backend.asked
    assert len(backend.prefilled) == prefills
    prefilled = backend.prefilled[0]
    assert prefilled == asked[: len(prefilled)] and len(asked) == len(prefilled) + 1  # all but the new question
    assert prefilled[0]["role"] == "system" and len(prefilled) == prefilled_messages


@pytest.mark.parametrize(
    ("settings", "model_busy", "prefills"),
    [
        (LlmSettings(backend="openai", server_prefill=True), False, True),  # llama-server's per-slot caches
        (LlmSettings(), False, False),  # the embedded model: one cache and thread for every session
        (LlmSettings(backend="openai"), False, False),  # a cloud API caches by itself and bills every request
    ],
)
async def test_who_is_prefilled_at_the_start_of_speech(settings: LlmSettings, model_busy: bool, prefills: bool) -> None:
    session, backend = Session(), RecordingBackend()
    backend.answering_someone_else = model_busy
    session.history += [Message("user", "question"), Message("assistant", "answer.")]
    async with Graph(session, [LlmStage(session, settings, backend)]) as graph:
        await graph.push(session.make(SpeechStarted))
        assert isinstance(await graph.output.get(), SpeechStarted)
    assert len(backend.prefilled) == prefills


async def test_manual_turns_prefill_nothing() -> None:
    session, backend = Session(), RecordingBackend()
    session.auto_respond = False
    async with Graph(session, [LlmStage(session, LlmSettings(), backend)]) as graph:
        await graph.push(session.make(Transcript, text="What time is it?", final=False))
        await graph.output.get()
    assert backend.prefilled == []


async def test_a_speculative_reply_is_made_only_while_the_model_is_free() -> None:
    """The early transcript is answered at once when the model is idle; when it is busy with
    another session the speculation is forgone (nothing to flush) and the prompt prefilled instead."""
    session, backend = Session(), RecordingBackend()
    session.speculative_reply = True
    async with Graph(session, [LlmStage(session, LlmSettings(), backend)]) as graph:
        await session.user_started_speaking()
        session.paused(1)
        assert session.begin_speculation(1)
        await graph.push(session.make(Transcript, text="What time is it?", final=False))
        frames = [await graph.output.get() for _ in range(3)]  # the partial, the reply text, the reply done
        assert isinstance(frames[-1], ReplyDone) and len(backend.asked) == 1 and backend.prefilled == []
        assert backend.asked[0][-1] == {"role": "user", "content": "What time is it?"}

        await session.drop_speculation()
        backend.answering_someone_else = True
        assert session.begin_speculation(1)
        await graph.push(session.make(Transcript, text="What time is it in Rome?", final=False))
        await graph.output.get()
        await asyncio.sleep(0.01)
    assert session.speculation is None and session.trace.notes["speculations_forgone"] == 1
    assert len(backend.asked) == 1 and len(backend.prefilled) == 1


def test_a_confirmed_speculation_is_never_forgone() -> None:
    session = Session()
    session.speculative_reply, session.user_speaking = True, True
    session.paused(1)
    assert session.begin_speculation(1)
    assert session.speculation is not None
    session.speculation.confirmed = ()
    assert not session.forgo_speculation() and session.speculation is not None


def chat(turns: int) -> list[Message]:
    return [Message(role, f"{role} {n}.") for n in range(turns) for role in ("user", "assistant")]


# A window of 6 messages starts at 0 up to the 3rd question, at 3 for the 4th and 5th, at 6 for the 6th.
@pytest.mark.parametrize(("earlier_turns", "prefills"), [(0, False), (2, True), (3, False), (4, True)])
@pytest.mark.parametrize(
    "settings",
    [
        LlmSettings(backend="embedded", max_history_messages=6),
        LlmSettings(backend="openai", server_prefill=True, max_history_messages=6),
    ],
    ids=["embedded", "server"],
)
async def test_after_a_reply_the_model_reads_the_next_window_only_when_it_moves(
    earlier_turns: int, prefills: bool, settings: LlmSettings
) -> None:
    session, backend = Session(), RecordingBackend()
    session.history = chat(earlier_turns)
    async with Graph(session, [LlmStage(session, settings, backend)]) as graph:
        session.user_said("What time is it?")
        await graph.push(session.make(Transcript, text="What time is it?", final=True))
        frames = [await graph.output.get() for _ in range(3)]
        await asyncio.sleep(0.01)
    assert isinstance(frames[-1], ReplyDone)
    [asked] = backend.asked
    assert len(backend.prefilled) == prefills
    if prefills:
        [window], [after] = backend.prefilled, backend.prefilled_after
        next_history = [*session.history, Message("assistant", "It is noon."), Message("user", "Next?")]
        assert after is asked  # only if nobody has used the model since
        assert window == build_messages(settings.system_prompt, next_history, 6, "")[:-1]


async def test_after_a_speculative_reply_the_next_window_counts_its_question_once() -> None:
    session, backend = Session(), RecordingBackend()
    session.history, session.speculative_reply = chat(2), True
    backend.while_answering = lambda: session.user_said("What time is it?")  # the turn ends, confirming it
    settings = LlmSettings(backend="embedded", max_history_messages=6)
    async with Graph(session, [LlmStage(session, settings, backend)]) as graph:
        await session.user_started_speaking()
        session.paused(1)
        assert session.begin_speculation(1)
        await graph.push(session.make(Transcript, text="What time is it?", final=False))
        [await graph.output.get() for _ in range(3)]
        await asyncio.sleep(0.01)
    [window] = backend.prefilled
    question, reply = {"role": "user", "content": "What time is it?"}, {"role": "assistant", "content": "It is noon."}
    assert window[-3:] == [{"role": "assistant", "content": "assistant 1."}, question, reply]


async def test_a_server_without_a_prompt_cache_is_not_prefilled_after_a_reply() -> None:
    session, backend = Session(), RecordingBackend()
    session.history = chat(2)
    settings = LlmSettings(backend="openai", server_prefill=False, max_history_messages=6)
    async with Graph(session, [LlmStage(session, settings, backend)]) as graph:
        session.user_said("What time is it?")
        await graph.push(session.make(Transcript, text="What time is it?", final=True))
        [await graph.output.get() for _ in range(3)]
        await asyncio.sleep(0.01)
    assert backend.prefilled == []  # a cloud API caches prompts by itself and bills every request
