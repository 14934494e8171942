"""Speculative replies on a virtual clock: held until the turn ends, then out at once; dropped unheard."""

from __future__ import annotations

import asyncio

import pytest

from voxloop.pipeline.clock import LoopClock
from voxloop.pipeline.frames import AudioOutput, Frame, Interrupt, ReplyDone, SpeechEnded, Transcript
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.testing import ScriptedLlm, ScriptedTts, WordChunker

pytestmark = [pytest.mark.usefixtures("no_leaked_tasks"), pytest.mark.looptime]

REPLY = "One two three four. Five six seven eight."
WORDS = "what time is it"


class Sink:
    """Reads the graph's output like a transport, noting when each frame left."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.frames: list[tuple[float, Frame]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        async for frame in self.graph.frames():
            self.frames.append((loop.time(), frame))
            self.graph.session.output_sent(frame)

    def of(self, kind: type[Frame]) -> list[tuple[float, Frame]]:
        return [(t, f) for t, f in self.frames if isinstance(f, kind)]

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def make_graph(session: Session) -> tuple[Graph, ScriptedTts]:
    session.speculative_reply = True
    llm, tts = ScriptedLlm(session, REPLY, first_token_s=0.1, token_s=0.02), ScriptedTts(session, first_audio_s=0.1)
    return Graph(session, [llm, WordChunker(session), tts]), tts


async def pause(session: Session, graph: Graph, text: str) -> None:
    """What the VAD and STT do at a pause: the early transcript, and a reply begun for it."""
    session.paused(session.now_ns())
    assert session.begin_speculation(session.now_ns())
    await graph.push(session.make(Transcript, text=text, final=False))


async def end_of_turn(session: Session, text: str, speech_end_ns: int) -> bool:
    """What the VAD and STT do at the endpoint when the words did not change."""
    session.user_stopped_speaking(speech_end_ns)
    session.mark("stt_final")
    session.user_said(text)
    ended = session.make(SpeechEnded, speech_end_ns=speech_end_ns)
    return await session.confirm_speculation(ended, session.make(Transcript, text=text))


async def test_a_confirmed_reply_was_ready_and_goes_out_at_the_endpoint() -> None:
    session = Session(clock=LoopClock())
    graph, _ = make_graph(session)
    loop = asyncio.get_running_loop()
    async with graph:
        sink = Sink(graph)
        await session.user_started_speaking()
        speech_end = session.now_ns()
        await pause(session, graph, WORDS)
        await asyncio.sleep(1.0)  # the hangover runs; the reply is prepared meanwhile
        assert not sink.of(AudioOutput), "a speculative reply was heard before the turn ended"
        assert [f.final for _, f in sink.of(Transcript)] == [False]  # the early words do go out
        assert session.state is State.LISTENING

        endpoint = loop.time()
        assert await end_of_turn(session, WORDS, speech_end)
        await asyncio.sleep(2.0)
        await sink.stop()

    kinds = [type(f).__name__ for _, f in sink.frames]
    assert kinds[:3] == ["Transcript", "SpeechEnded", "Transcript"]  # end of speech and words, then the reply
    first_audio = sink.of(AudioOutput)[0][0]
    assert first_audio - endpoint < 0.001, "held audio waited after the endpoint"
    assert len(sink.of(AudioOutput)) == 20 and isinstance(sink.frames[-1][1], ReplyDone)
    assert [m.role for m in session.history] == ["user", "assistant"]
    assert session.history[-1].content == REPLY
    assert session.speculation is None and session.state is State.LISTENING
    trace = session.finished_traces[-1]
    assert trace.notes["reply"] == "speculative"
    assert trace.voice_to_voice_ms == pytest.approx(1000, abs=1)
    # The steps done during the hangover took no share of the wait: the shares add up.
    assert sum(trace.spans_ms().values()) == pytest.approx(trace.voice_to_voice_ms, abs=0.01)
    assert trace.spans_ms()["llm_first_token"] == 0


async def test_a_barge_in_before_the_output_read_the_confirmation_still_reports_the_users_words() -> None:
    """The end of turn confirmed the held reply, and the user went on before the output reader
    woke (a VAD catching up on late input does both in one go): the reply is gone, but the end
    of speech and the words the server took in must still reach the client."""
    session = Session(clock=LoopClock())
    graph, _ = make_graph(session)
    async with graph:
        sink = Sink(graph)
        await session.user_started_speaking()
        speech_end = session.now_ns()
        await pause(session, graph, WORDS)
        await asyncio.sleep(1.0)
        assert await end_of_turn(session, WORDS, speech_end)
        await session.user_started_speaking()  # no await in between: the reader has not run
        await asyncio.sleep(2.0)
        await sink.stop()

    kinds = [type(f).__name__ for _, f in sink.frames]
    assert kinds == ["Transcript", "SpeechEnded", "Transcript", "Interrupt"]
    assert sink.frames[2][1].final and sink.frames[2][1].text == WORDS
    assert session.question("in Tokyo") == WORDS + " in Tokyo", "the words are answered with the next ones"


async def test_talking_on_after_the_pause_drops_the_reply_unheard() -> None:
    session = Session(clock=LoopClock())
    graph, tts = make_graph(session)
    async with graph:
        sink = Sink(graph)
        await session.user_started_speaking()
        await pause(session, graph, WORDS)
        await asyncio.sleep(0.3)  # mid-reply: some audio already made and held
        epoch = session.epoch
        await session.drop_speculation()  # the VAD heard more speech
        assert session.epoch == epoch + 1 and session.speculation is None
        assert not graph._inflight, "the dropped reply is still being prepared"
        assert "llm_first_token" not in session.trace.marks  # the real reply's marks are its own
        await asyncio.sleep(0.5)
        assert not sink.of(AudioOutput) and not sink.of(Interrupt), "the client heard of a dropped speculation"
        assert tts.cancelled == 1

        # The turn ends later with more words, and is answered the ordinary way.
        session.user_stopped_speaking(session.now_ns())
        session.user_said(WORDS + " in Tokyo")
        assert not await session.confirm_speculation(session.make(Transcript, text=WORDS + " in Tokyo"))
        await graph.push(session.make(Transcript, text=WORDS + " in Tokyo"))
        await asyncio.sleep(2.0)
        await sink.stop()

    assert session.interrupts == 0  # not an interruption the user made
    assert len(sink.of(AudioOutput)) == 20 and all(f.epoch == epoch + 1 for _, f in sink.of(AudioOutput))
    assert session.history[0].content == WORDS + " in Tokyo"
    assert session.finished_traces[-1].notes["speculations_dropped"] == 1


async def test_a_barge_in_or_cancel_ends_a_speculation() -> None:
    session = Session()
    session.speculative_reply = True
    await session.user_started_speaking()
    session.paused(5)
    assert session.begin_speculation(5)
    assert not session.begin_speculation(5), "one speculation at a time"
    await session.interrupt("cancel")
    assert session.speculation is None


async def test_no_speculation_when_off_or_for_manual_turns() -> None:
    session = Session()
    await session.user_started_speaking()
    session.paused(1)
    assert not session.begin_speculation(1)  # off unless the VAD settings turn it on
    session.speculative_reply, session.auto_respond = True, False
    assert not session.begin_speculation(1)
    session.auto_respond = True
    session.user_stopped_speaking(1)
    assert not session.begin_speculation(1), "only while the user's utterance is still open"


async def test_no_speculation_on_a_pause_the_user_already_spoke_past() -> None:
    """Whisper, busy with other sessions, may deliver a pause's words after the user spoke on: a
    reply begun then would answer half a question, and the next pause's end of turn would confirm
    it in place of the whole one (heard in a 4-user benchmark: a long question answered twice)."""
    session = Session()
    session.speculative_reply = True
    await session.user_started_speaking()
    session.paused(100)
    await session.voice_resumed()  # before the first pause's transcript came back
    assert not session.begin_speculation(100)
    session.paused(200)  # the next pause, still on
    assert not session.begin_speculation(100), "the first pause's words came late: not answered"
    assert session.begin_speculation(200)
    await session.voice_resumed()
    assert session.speculation is None  # the reply begun for it is dropped with it
