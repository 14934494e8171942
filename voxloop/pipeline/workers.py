"""Running blocking model code off the event loop, live conversations first.

A ModelWorker owns a small thread pool for one loaded model, shared by every session that
uses the model. `run` awaits one blocking call; `stream` turns a blocking generator (LLM
tokens, TTS audio, Whisper segments) into an async iterator whose cancellation stops the
generator at its next item, so a barge-in frees the model within one token or one audio block.

Each call, and each stream, takes one of the model's `max_workers` slots through a
PriorityGate: waiting work is served by Priority (live, then ahead of need, then batch), then
in arrival order. A stream holds its
slot from start to end, since a generator over a stateful model (an LLM's context) must not
be interleaved with another; one whose items are independent model calls (Whisper windows,
Piper sentences) says `interleave=True` and takes the slot per item. Work started under
`batch_priority()` (the REST API: an uploaded file to transcribe, a text to synthesize) then
yields the model to live sessions between two items, so a long upload delays a live turn by
one item rather than by the whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_DONE = object()
WAITING_THREADS = 4  # threads beyond the slots, so queued work waits in priority order, not the pool's FIFO


class Priority(enum.IntEnum):
    LIVE = 0  # someone is waiting for it now: a transcript, a reply's first clause
    AHEAD = 1  # live work ahead of need: a reply's later sentences, made while the first one plays
    BATCH = 2  # a REST request: nobody is waiting on the next few hundred milliseconds


_priority: ContextVar[Priority] = ContextVar("voxloop_worker_priority", default=Priority.LIVE)


@contextlib.contextmanager
def work_priority(priority: Priority) -> Iterator[None]:
    """Model work started in this block (and in tasks it creates) waits behind work of a lower value."""
    token = _priority.set(priority)
    try:
        yield
    finally:
        _priority.reset(token)


def batch_priority() -> contextlib.AbstractContextManager[None]:
    return work_priority(Priority.BATCH)


def current_priority() -> Priority:
    """The priority model work started here would get."""
    return _priority.get()


class PriorityGate:
    """At most `slots` holders at once; waiters are let in by (priority, arrival). Thread-side."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int]] = []
        self._tickets = itertools.count()
        self._changed = threading.Condition()

    @property
    def busy(self) -> bool:
        """Is every slot taken, or someone waiting for one?"""
        with self._changed:
            return self._free == 0 or bool(self._waiting)

    @contextlib.contextmanager
    def held(self, priority: Priority) -> Iterator[None]:
        ticket = (int(priority), next(self._tickets))
        with self._changed:
            heapq.heappush(self._waiting, ticket)
            while not (self._free and self._waiting[0] == ticket):
                self._changed.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._changed.notify_all()


class ModelWorker:
    """A bounded executor for one model. `max_workers` > 1 only for models that are thread-safe."""

    def __init__(self, name: str, max_workers: int = 1) -> None:
        self.name = name
        self.gate = PriorityGate(max_workers)
        self._pool = ThreadPoolExecutor(max_workers=max_workers + WAITING_THREADS, thread_name_prefix=f"voxloop-{name}")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        priority = current_priority()

        def gated() -> T:
            with self.gate.held(priority):
                return fn(*args, **kwargs)

        return await loop.run_in_executor(self._pool, gated)

    async def stream(
        self, make_items: Callable[[], Iterator[T]], *, buffer: int = 64, interleave: bool = False
    ) -> AsyncGenerator[T, None]:
        """Iterate a blocking generator in the pool; stop it when the consumer goes away.
        `interleave`: other work may use the model between two items (they are independent calls)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        room = threading.Semaphore(buffer)
        priority = current_priority()

        def produce() -> None:
            whole = contextlib.nullcontext() if interleave else self.gate.held(priority)
            each: Callable[[], contextlib.AbstractContextManager[None]] = (
                (lambda: self.gate.held(priority)) if interleave else contextlib.nullcontext
            )
            try:
                with whole:
                    items = make_items()
                    try:
                        while True:
                            with each():
                                item = next(items, _DONE)
                            if item is _DONE:
                                break
                            if not self._handed_over(item, room, stop, loop, queue):
                                return
                        loop.call_soon_threadsafe(queue.put_nowait, _DONE)
                    finally:
                        with each():  # the generator's clean-up touches the model too
                            close = getattr(items, "close", None)
                            if close is not None:
                                close()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                if not stop.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, exc)

        future = loop.run_in_executor(self._pool, produce)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                room.release()
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            # The thread exits at its next item; don't wait for it on cancellation.
            if future.done():
                future.result()

    @staticmethod
    def _handed_over(
        item: object,
        room: threading.Semaphore,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
    ) -> bool:
        """Queue `item` for the consumer once there is room; False if the consumer went away."""
        while not room.acquire(timeout=0.05):  # backpressure without blocking forever
            if stop.is_set():
                return False
        if stop.is_set():
            return False
        loop.call_soon_threadsafe(queue.put_nowait, item)
        return True

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
