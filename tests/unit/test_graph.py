from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from voxloop.pipeline.frames import (
    AudioInput,
    ErrorFrame,
    Frame,
    Interrupt,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    Transcript,
)
from voxloop.pipeline.graph import Graph, Lane
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase

pytestmark = [pytest.mark.usefixtures("no_leaked_tasks"), pytest.mark.looptime]


class Upper(StageBase):
    """Handles ReplyText only: upper-cases it. Fails on the word 'boom'."""

    name = "upper"
    handles = (ReplyText,)

    def __init__(self, session: Session) -> None:
        self.session = session

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, ReplyText)
        if frame.text == "boom":
            raise RuntimeError("the upper stage exploded")
        await asyncio.sleep(0.01)
        yield self.session.make(ReplyText, text=frame.text.upper())


async def collect(graph: Graph, count: int) -> list[Frame]:
    frames = []
    async for frame in graph.frames():
        frames.append(frame)
        if len(frames) == count:
            break
    return frames


async def test_frames_a_stage_does_not_handle_are_forwarded_in_order() -> None:
    session = Session()
    async with Graph(session, [Upper(session), Upper(session)]) as graph:
        await graph.push(session.make(ReplyText, text="a"))
        await graph.push(session.make(Transcript, text="passes through"))
        await graph.push(session.make(ReplyText, text="b"))
        out = await collect(graph, 3)
    assert [(type(f).__name__, getattr(f, "text", "")) for f in out] == [
        ("ReplyText", "A"),
        ("Transcript", "passes through"),
        ("ReplyText", "B"),
    ]


async def test_a_failing_stage_yields_an_error_frame_and_the_graph_goes_on() -> None:
    session = Session()
    async with Graph(session, [Upper(session)]) as graph:
        await graph.push(session.make(ReplyText, text="boom"))
        await graph.push(session.make(ReplyText, text="after"))
        error, after = await collect(graph, 2)
    assert isinstance(error, ErrorFrame)
    assert (error.stage, error.message, error.fatal) == ("upper", "the upper stage exploded", False)
    assert isinstance(after, ReplyText) and after.text == "AFTER"


async def test_control_frames_overtake_queued_data() -> None:
    session = Session()
    lane = Lane(maxsize=8)
    for word in ["one", "two", "three"]:
        await lane.put(session.make(ReplyText, text=word))
    await lane.put(session.make(Interrupt, reason="test"))
    first = await lane.get()
    assert isinstance(first, Interrupt)
    assert [getattr(await lane.get(), "text", None) for _ in range(3)] == ["one", "two", "three"]


async def test_a_full_lane_applies_backpressure_but_never_to_control() -> None:
    session = Session()
    lane = Lane(maxsize=2)
    await lane.put(session.make(ReplyText, text="1"))
    await lane.put(session.make(ReplyText, text="2"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(lane.put(session.make(ReplyText, text="3")), timeout=1.0)
    await asyncio.wait_for(lane.put(session.make(Interrupt)), timeout=0.01)
    assert len(lane) == 3


async def test_stale_data_is_dropped_from_lanes_but_input_audio_and_the_users_news_are_kept() -> None:
    session = Session()
    lane = Lane(maxsize=8)
    await lane.put(session.make(ReplyText, text="old"))
    await lane.put(session.make(AudioInput))
    await lane.put(session.make(SpeechStarted))
    await lane.put(session.make(SpeechEnded, final=False))  # a pause: the STT's business only
    await lane.put(session.make(SpeechEnded))
    session.epoch += 1
    await lane.put(session.make(ReplyText, text="new"))
    assert lane.drop_stale(session.epoch) == 2
    kinds = [type(await lane.get()).__name__ for _ in range(4)]
    assert kinds == ["AudioInput", "SpeechStarted", "SpeechEnded", "ReplyText"]


class Endpoint(StageBase):
    """Like the STT at a final end whose early transcript missed: the dropped speculation bumps the
    epoch while this stage still holds the end of speech it is about to report."""

    name = "endpoint"
    handles = (SpeechEnded,)

    def __init__(self, session: Session) -> None:
        self.session = session

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        self.session.epoch += 1
        yield frame
        yield self.session.make(Transcript, text="the words")


async def test_a_stale_report_is_forwarded_unprocessed_in_order() -> None:
    session = Session()
    graph = Graph(session, [Endpoint(session), Upper(session)])
    async with graph:
        reader = asyncio.create_task(collect(graph, 3))
        await graph.push(session.make(SpeechEnded))
        await graph.push(session.make(SpeechEnded, final=False))  # stale once the first is processed
        await graph.push(session.make(ReplyText, text="stale"))
        await graph.push(session.make(SpeechStarted))
        out = await asyncio.wait_for(reader, timeout=1)
    assert [type(f).__name__ for f in out] == ["SpeechEnded", "Transcript", "SpeechStarted"]
    assert graph.dropped == 2  # the pause and the text; the reports went on
