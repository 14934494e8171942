"""ModelWorker: live work before batch work, a batch stream yields the model between items."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest

from voxloop.pipeline.workers import ModelWorker, Priority, batch_priority, current_priority, work_priority
from voxloop.server.rest import BatchPriority

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@pytest.fixture
def worker() -> Iterator[ModelWorker]:
    worker = ModelWorker("test")
    yield worker
    worker.shutdown()


async def test_waiting_live_work_goes_before_waiting_batch_work(worker: ModelWorker) -> None:
    release, order = threading.Event(), []
    busy = asyncio.create_task(worker.run(release.wait, 5))
    await asyncio.sleep(0.05)  # the model is busy; both calls below must wait
    with batch_priority():
        batch = asyncio.create_task(worker.run(order.append, "batch"))
    await asyncio.sleep(0.05)  # the batch call is the first to wait
    live = asyncio.create_task(worker.run(order.append, "live"))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(busy, batch, live)
    assert order == ["live", "batch"]


async def test_a_batch_stream_lets_a_live_call_in_between_two_items(worker: ModelWorker) -> None:
    events: list[str] = []

    def slow_items() -> Iterator[int]:
        for index in range(10):
            time.sleep(0.03)  # one Whisper window, say
            events.append(f"item {index}")
            yield index

    async def read_all() -> list[int]:
        with batch_priority():
            return [item async for item in worker.stream(slow_items, interleave=True)]

    reader = asyncio.create_task(read_all())
    await asyncio.sleep(0.1)
    await worker.run(events.append, "live")
    assert await reader == list(range(10))
    live_at = events.index("live")
    assert 0 < live_at < 6, f"the live call waited for the whole stream: {events}"


async def test_leaving_a_stream_stops_and_closes_its_generator(worker: ModelWorker) -> None:
    produced, closed = [], threading.Event()

    def items() -> Iterator[int]:
        try:
            for index in range(1000):
                produced.append(index)
                time.sleep(0.005)
                yield index
        finally:
            closed.set()

    stream = worker.stream(items, buffer=2, interleave=True)
    async for item in stream:
        if item == 3:
            break
    await stream.aclose()
    assert await asyncio.to_thread(closed.wait, 2), "the generator was not closed"
    assert len(produced) < 10
    # The model is free again at once.
    assert await asyncio.wait_for(worker.run(lambda: "free"), 1) == "free"


async def test_a_stream_over_a_stateful_model_is_never_interleaved(worker: ModelWorker) -> None:
    """An LLM's generator keeps state in the model: a second one waits for the first to end."""
    events: list[str] = []

    def tokens(name: str) -> Iterator[str]:
        for index in range(5):
            time.sleep(0.01)
            events.append(name)
            yield f"{name}{index}"

    async def read(name: str) -> list[str]:
        return [token async for token in worker.stream(lambda: tokens(name))]

    first, second = await asyncio.gather(read("a"), read("b"))
    assert first == [f"a{i}" for i in range(5)] and second == [f"b{i}" for i in range(5)]
    assert events == ["a"] * 5 + ["b"] * 5


async def test_a_waiting_guess_promoted_to_live_goes_before_earlier_guesses(worker: ModelWorker) -> None:
    release, order = threading.Event(), []
    busy = asyncio.create_task(worker.run(release.wait, 5))
    await asyncio.sleep(0.05)  # the model is busy; the calls below wait
    with work_priority(Priority.AHEAD):
        first, second = worker.start(order.append, "first guess"), worker.start(order.append, "second guess")
    second.promote()  # its session's turn ended: someone waits for it now
    second.promote(Priority.BATCH)  # never demoted
    release.set()
    await asyncio.gather(busy, first, second)
    assert order == ["second guess", "first guess"]
    second.promote()  # done: nothing to move


async def test_a_promoted_call_moves_from_a_busy_background_thread_to_a_free_live_one() -> None:
    worker = ModelWorker("test-bg", background=1)
    try:
        release = threading.Event()
        with work_priority(Priority.AHEAD):
            later = asyncio.create_task(worker.run(release.wait, 5))
            await asyncio.sleep(0.05)  # the background thread is busy ...
            waiting = worker.start(_niceness)  # ... so this one waits for it
        waiting.promote()
        assert await asyncio.wait_for(waiting, 1) == _niceness()  # on the live thread, at once
        assert not later.done()
        release.set()
        assert await later is True
    finally:
        worker.shutdown()


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_a_worker_starts_all_its_threads_up_front_and_keeps_to_them() -> None:
    """The thread count is fixed from construction: a pool growing later would read as a leak."""

    def named() -> int:
        return sum(t.name.startswith("voxloop-test-fixed") for t in threading.enumerate())

    before = named()
    worker = ModelWorker("test-fixed", max_workers=2, background=1)
    try:
        assert named() == before + 3
        calls = [worker.start(time.sleep, 0.01) for _ in range(6)]
        with work_priority(Priority.AHEAD):
            calls += [worker.start(time.sleep, 0.01) for _ in range(6)]
        await asyncio.wait_for(asyncio.gather(*calls), 5)
        assert named() == before + 3
    finally:
        worker.shutdown()


async def test_background_work_runs_beside_live_work_on_a_lower_priority_thread() -> None:
    """With a background thread, a reply's later sentences never hold up a live call: the live one
    runs at once on its own thread, at the process's priority; the background one at a lower one."""
    worker = ModelWorker("test-bg", background=1, background_nice=5)
    try:
        release, seen = threading.Event(), {}

        def background_sentence() -> int:
            seen["background"] = _niceness()
            release.wait(5)
            return _niceness()

        with work_priority(Priority.AHEAD):
            later = asyncio.create_task(worker.run(background_sentence))
        await asyncio.sleep(0.05)  # the background thread is busy ...
        live = await asyncio.wait_for(worker.run(_niceness), 1)  # ... and a live call does not wait for it
        assert not worker.busy
        release.set()
        base = _niceness()
        assert live == base and await later == seen["background"] == min(19, base + 5)
        # Background work only ever runs on background threads: batch work too.
        with batch_priority():
            assert await worker.run(_niceness) == min(19, base + 5)
    finally:
        worker.shutdown()


async def test_live_work_never_waits_for_a_background_stream() -> None:
    worker = ModelWorker("test-bg", background=1)
    try:
        events: list[str] = []

        def sentences() -> Iterator[int]:
            for index in range(6):
                time.sleep(0.03)
                events.append(f"sentence {index}")
                yield index

        async def read_all() -> list[int]:
            with work_priority(Priority.AHEAD):
                return [item async for item in worker.stream(sentences, interleave=True)]

        reader = asyncio.create_task(read_all())
        await asyncio.sleep(0.05)
        with batch_priority():
            batch = asyncio.create_task(worker.run(events.append, "batch"))
        await worker.run(events.append, "live")  # its own thread: at once
        assert await reader == list(range(6))
        await batch
        # Live work did not wait for the stream; batch work, less urgent than it, waited to the end.
        assert events.index("live") < events.index("sentence 5") and events[-1] == "batch"
    finally:
        worker.shutdown()


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/transcribe", Priority.BATCH), ("/v1/realtime/calls", Priority.LIVE), ("/healthz", Priority.LIVE)],
)
async def test_the_rest_api_runs_at_batch_priority(path: str, expected: Priority) -> None:
    seen: list[Priority] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(current_priority())

    async def nothing() -> dict[str, object]:
        return {}

    async def ignore(message: object) -> None:
        return None

    await BatchPriority(app)({"type": "http", "path": path}, nothing, ignore)  # type: ignore[arg-type]
    assert seen == [expected] and current_priority() is Priority.LIVE
