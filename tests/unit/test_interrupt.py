"""Barge-in semantics on a virtual clock, with scripted fake LLM / chunker / TTS stages."""

from __future__ import annotations

import asyncio

import pytest

from voxloop.pipeline.frames import AudioOutput, Frame, Interrupt, ReplyDone, Transcript
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.testing import ScriptedLlm, ScriptedTts, WordChunker

pytestmark = [pytest.mark.usefixtures("no_leaked_tasks"), pytest.mark.looptime]

REPLY = "One two three four. Five six seven eight. Nine ten eleven twelve."


class Sink:
    """Reads the graph's output like a transport would, doing the session's bookkeeping."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.frames = graph, []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.graph.frames():
            self.frames.append(frame)
            self.graph.session.output_sent(frame)

    def audio(self, epoch: int | None = None) -> list[AudioOutput]:
        return [f for f in self.frames if isinstance(f, AudioOutput) and epoch in (None, f.epoch)]

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def make_graph(session: Session) -> tuple[Graph, ScriptedLlm, ScriptedTts]:
    llm, tts = ScriptedLlm(session, REPLY), ScriptedTts(session)
    return Graph(session, [llm, WordChunker(session), tts]), llm, tts


async def say(session: Session, graph: Graph, text: str) -> None:
    await session.user_started_speaking()
    session.user_said(text)
    await graph.push(session.make(Transcript, text=text))


async def test_a_whole_reply_flows_and_is_committed_to_history() -> None:
    session = Session()
    graph, _, _ = make_graph(session)
    async with graph:
        sink = Sink(graph)
        await say(session, graph, "count for me")
        await asyncio.sleep(5)
        await sink.stop()
    assert isinstance(sink.frames[-1], ReplyDone)
    assert len(sink.audio()) == 30  # three chunks of ten frames
    assert session.history[-1].content == REPLY
    assert session.state is State.LISTENING


async def test_barge_in_stops_old_audio_at_once_and_trims_history() -> None:
    session = Session()
    graph, llm, tts = make_graph(session)
    loop = asyncio.get_running_loop()
    async with graph:
        sink = Sink(graph)
        await say(session, graph, "count for me")
        # Wait until the second chunk is being spoken.
        while not any(f.chunk_index == 1 for f in sink.audio()):
            await asyncio.sleep(0.01)
        assert session.state is State.SPEAKING

        started = loop.time()
        await session.user_started_speaking()  # the user talks over the reply
        assert loop.time() - started < 0.001, "interrupt must not wait on stages"
        assert not graph._inflight, "work of the old epoch still running after interrupt()"
        heard = len(sink.audio(epoch=0))

        await asyncio.sleep(3)  # anything still queued for the old epoch would arrive now
        assert len(sink.audio(epoch=0)) == heard
        assert tts.cancelled == 1
        assert sum(isinstance(f, Interrupt) for f in sink.frames) == 1
        assert not any(isinstance(f, ReplyDone) and f.epoch == 0 for f in sink.frames)

        # History keeps what was heard: the first two chunks, not the third.
        assert session.history[-1].role == "assistant"
        assert session.history[-1].content == "One two three four. Five six seven eight."

        # The next turn is answered normally in the new epoch.
        session.user_said("again please")
        await graph.push(session.make(Transcript, text="again please"))
        await asyncio.sleep(5)
        await sink.stop()
    assert len(sink.audio(epoch=1)) == 30
    assert llm.cancelled == 0  # the LLM had already finished when the user barged in


async def test_barge_in_while_thinking_cancels_the_llm_and_keeps_the_users_words() -> None:
    session = Session()
    graph, llm, _ = make_graph(session)
    async with graph:
        sink = Sink(graph)
        await say(session, graph, "I would like")
        await asyncio.sleep(0.1)  # the LLM is still before its first token (0.2 s)
        assert session.state is State.THINKING
        await session.user_started_speaking()
        await asyncio.sleep(1)
        assert llm.cancelled == 1
        assert sink.audio() == []
        assert session.user_said("a pizza") == "I would like a pizza"
        await sink.stop()


async def test_frames_of_an_old_epoch_pushed_late_are_dropped() -> None:
    session = Session()
    graph, _, _ = make_graph(session)
    async with graph:
        sink = Sink(graph)
        late: Frame = session.make(Transcript, text="stale question")
        early_guess: Frame = session.make(Transcript, text="stale", final=False)
        await session.interrupt("cancel")
        await graph.push(early_guess)
        await graph.push(late)
        await asyncio.sleep(2)
        await sink.stop()
    assert sink.audio() == []  # not answered
    assert graph.dropped >= 1
    # but the user's final words still reach the client (a stale early guess is no news)
    assert [f.text for f in sink.frames if isinstance(f, Transcript)] == ["stale question"]
