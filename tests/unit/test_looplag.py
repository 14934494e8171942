"""The loop-lag monitor catches a stage that blocks the loop, and the worker keeps it free."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

from voxloop.pipeline.frames import Frame, ReplyText
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.looplag import LoopLagMonitor
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.workers import ModelWorker

WORK_S = 0.15


class Inference(StageBase):
    """Stands in for a model call of WORK_S seconds, either on the loop or in a worker."""

    name = "inference"
    handles = (ReplyText,)

    def __init__(self, session: Session, worker: ModelWorker | None) -> None:
        self.session, self.worker = session, worker

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if self.worker is None:
            time.sleep(WORK_S)  # the mistake the monitor exists to catch
        else:
            await self.worker.run(time.sleep, WORK_S)
        yield frame


async def run_turns(worker: ModelWorker | None) -> LoopLagMonitor:
    session = Session()
    async with (
        LoopLagMonitor(interval_s=0.005) as monitor,
        Graph(session, [Inference(session, worker)]) as graph,
    ):
        for _ in range(3):
            await graph.push(session.make(ReplyText, text="x"))
        outputs = graph.frames()
        for _ in range(3):
            await anext(outputs)
    return monitor


async def test_blocking_on_the_loop_is_caught() -> None:
    monitor = await run_turns(worker=None)
    assert monitor.max_ms > WORK_S * 1000 * 0.8


async def test_a_model_worker_keeps_the_loop_free() -> None:
    worker = ModelWorker("sleep")
    try:
        monitor = await run_turns(worker)
    finally:
        worker.shutdown()
    assert len(monitor.lags_ms) > 50
    assert monitor.max_ms < 40, f"loop lag {monitor.max_ms:.1f} ms with a worker"


async def test_worker_stream_stops_the_producer_when_the_consumer_leaves() -> None:
    worker = ModelWorker("gen")
    produced: list[int] = []

    def numbers() -> Iterator[int]:
        for n in range(1000):
            produced.append(n)
            time.sleep(0.002)
            yield n

    async def take_three() -> list[int]:
        got = []
        async for n in worker.stream(numbers, buffer=2):
            got.append(n)
            if len(got) == 3:
                break
        return got

    try:
        assert await take_three() == [0, 1, 2]
        time.sleep(0.1)
        count = len(produced)
        time.sleep(0.1)
        assert len(produced) == count < 10, "the producer thread kept running after the consumer left"
    finally:
        worker.shutdown()
