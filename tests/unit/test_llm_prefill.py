"""The LLM stage warms the model with the early transcript, for the prompt the reply then uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.frames import ReplyDone, Transcript
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session
from voxloop.stages.llm import LlmStage


class RecordingBackend:
    name = "recording"

    def __init__(self) -> None:
        self.prefilled: list[list[dict[str, str]]] = []
        self.asked: list[list[dict[str, str]]] = []

    async def prefill(self, messages: list[dict[str, str]]) -> None:
        self.prefilled.append(messages)

    async def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.asked.append(messages)
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


async def test_manual_turns_prefill_nothing() -> None:
    session, backend = Session(), RecordingBackend()
    session.auto_respond = False
    async with Graph(session, [LlmStage(session, LlmSettings(), backend)]) as graph:
        await graph.push(session.make(Transcript, text="What time is it?", final=False))
        await graph.output.get()
    assert backend.prefilled == []
