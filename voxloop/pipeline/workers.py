"""Running blocking model code off the event loop, live conversations first.

A ModelWorker owns the threads of one loaded model (`max_workers`, 1 unless the model is
thread-safe), shared by every session that uses the model. `run` awaits one blocking call;
`stream` turns a blocking generator (LLM tokens, TTS audio, Whisper segments) into an async
iterator whose cancellation stops the generator at its next item, so a barge-in frees the model
within one token or one audio block.

Calls wait in a priority queue, not in the pool's FIFO: each submission hands the pool one "run
the most urgent call waiting" job, so a free thread always takes live work first, then work
ahead of need (a reply's later sentences), then batch work (the REST API, run under
`batch_priority()`), each in arrival order. A call that is still waiting can be promoted
(`start(...).promote()`): a guess made ahead of need becomes live work once someone waits for
it. A stream keeps its thread from start to end, since a generator over a stateful model (an
LLM's context) must not be interleaved with other calls. One whose items are independent model
calls (Whisper windows, Piper sentences) says `interleave=True`: between two items its thread
first runs any waiting call that is at least as urgent as the stream, so a 5-minute upload
delays a live turn by one Whisper window, not by the whole file. The (foreground) threads never
outnumber `max_workers`.

A model whose calls may run side by side (an ONNX Runtime session) can also be given background
threads (`background=N`): then live calls run on the `max_workers` foreground threads and work
ahead of need and batch work on the background ones, which the operating system runs at a lower
priority (`background_nice`). On a small CPU shared with other models and an LLM server, a reply's
later sentences then take only the cycles nobody waiting needs, instead of slowing down another
session's first clause or first token (the kernel preempts within milliseconds; a queue can only
reorder whole calls). Raising a thread's niceness needs no privilege; it is never lowered again,
which is why the two kinds of work keep to their own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import heapq
import itertools
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_DONE = object()
BACKGROUND_NICE = 10  # background threads' niceness: about a tenth of a normal thread's share of a busy core

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    LIVE = 0  # someone is waiting for it now: a transcript, a reply's first clause
    AHEAD = 1  # live work ahead of need: a reply's later sentences, made while the first one plays
    BATCH = 2  # a REST request: nobody is waiting on the next few hundred milliseconds


_priority: ContextVar[Priority] = ContextVar("voxloop_worker_priority", default=Priority.LIVE)


@contextlib.contextmanager
def work_priority(priority: Priority) -> Iterator[None]:
    """Model work started in this block (and in tasks it creates) waits behind more urgent work."""
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


class _Call:
    """One blocking call waiting for the model, and the future its result goes to."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()

    def run(self, freed: Callable[[], None] = lambda: None) -> None:
        """Run it; `freed` is called once the thread is done with it, before the awaiter hears the outcome."""
        if not self.future.set_running_or_notify_cancel():
            freed()
            return  # its awaiter went away before it started
        result: Any = None
        error: BaseException | None = None
        try:
            result = self.fn()
        except BaseException as exc:  # handed to the awaiter
            error = exc
        freed()
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)


class Pending(Generic[T]):
    """A call queued for a model: await it for the result. `promote` moves it up the queue while
    it still waits; once it runs, it keeps the thread it has."""

    def __init__(self, worker: ModelWorker, call: _Call) -> None:
        self._worker = worker
        self._call = call

    def promote(self, priority: Priority = Priority.LIVE) -> None:
        self._worker._promote(self._call, priority)

    def __await__(self) -> Generator[Any, None, T]:
        # Cancelling the awaiter cancels the call if it has not started (as for `run`).
        return asyncio.wrap_future(self._call.future).__await__()


class _Lane:
    """Threads and the queue of calls waiting for them: a priority heap, the most urgent first."""

    def __init__(self, name: str, threads: int, nice: int = 0) -> None:
        initializer = functools.partial(_renice, nice) if nice else None
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"voxloop-{name}", initializer=initializer)
        self.slots = threads
        self.waiting: list[tuple[int, int, _Call]] = []
        self.active = 0  # calls (and streams) holding a thread now
        self._start_threads()

    def _start_threads(self) -> None:
        """Start every thread now rather than on first need: a pool that grows an hour into a run
        reads as a thread leak to anyone counting the process's threads (the soak and fault tests do)."""
        started = threading.Barrier(self.slots + 1)
        for _ in range(self.slots):
            self.pool.submit(started.wait)  # each waits, so each submit finds no idle thread and adds one
        started.wait()


class ModelWorker:
    """The threads of one model and the queues of calls waiting for them."""

    def __init__(
        self, name: str, max_workers: int = 1, *, background: int = 0, background_nice: int = BACKGROUND_NICE
    ) -> None:
        self.name = name
        self._live = _Lane(name, max_workers)
        self._later = _Lane(f"{name}-bg", background, background_nice) if background else self._live
        self._tickets = itertools.count()
        self._lock = threading.Lock()

    def _lane(self, priority: Priority) -> _Lane:
        return self._live if priority is Priority.LIVE else self._later

    @property
    def busy(self) -> bool:
        """Is every live thread taken, or a live call waiting for one?"""
        with self._lock:
            return self._live.active >= self._live.slots or bool(self._live.waiting)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.start(fn, *args, **kwargs)

    def start(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Pending[T]:
        """Queue a call at the current priority, without waiting for it yet."""
        return Pending(self, self._submit(lambda: fn(*args, **kwargs), current_priority()))

    def _submit(self, fn: Callable[[], Any], priority: Priority) -> _Call:
        call = _Call(fn)
        lane = self._lane(priority)
        with self._lock:
            heapq.heappush(lane.waiting, (int(priority), next(self._tickets), call))
        lane.pool.submit(self._run_most_urgent, lane)
        return call

    def _promote(self, call: _Call, priority: Priority) -> None:
        """Requeue `call` at `priority` (in that priority's lane) if it waits at a lower one."""
        with self._lock:
            found = [(lane, entry) for lane in self._lanes() for entry in lane.waiting if entry[2] is call]
            if not found or found[0][1][0] <= priority:
                return  # running, done, or already as urgent
            [(lane, entry)] = found
            lane.waiting.remove(entry)
            heapq.heapify(lane.waiting)
            target = self._lane(priority)
            heapq.heappush(target.waiting, (int(priority), entry[1], call))  # its ticket: arrival order
        if target is not lane:
            # A thread of the new lane runs it; the old lane's job for it runs the next call, or none.
            target.pool.submit(self._run_most_urgent, target)

    def _lanes(self) -> tuple[_Lane, ...]:
        return (self._live,) if self._later is self._live else (self._live, self._later)

    def _run_most_urgent(self, lane: _Lane) -> None:
        call = self._take(lane)
        if call is None:
            return  # a streaming thread ran it in between two of its items
        with self._lock:
            lane.active += 1

        def freed() -> None:
            with self._lock:
                lane.active -= 1

        call.run(freed)  # the thread counts as free before the awaiter resumes: `busy` is never stale

    def _take(self, lane: _Lane, at_most: Priority | None = None) -> _Call | None:
        """The lane's most urgent waiting call (only if at least as urgent as `at_most`), off its queue."""
        with self._lock:
            if not lane.waiting or (at_most is not None and lane.waiting[0][0] > at_most):
                return None
            return heapq.heappop(lane.waiting)[2]

    def _run_waiting(self, at_most: Priority) -> None:
        """In a streaming thread between two items: the waiting calls of its lane at least as urgent as the stream."""
        lane = self._lane(at_most)
        while (call := self._take(lane, at_most)) is not None:
            call.run()

    async def stream(
        self, make_items: Callable[[], Iterator[T]], *, buffer: int = 64, interleave: bool = False
    ) -> AsyncGenerator[T, None]:
        """Iterate a blocking generator on the model's thread; stop it when the consumer goes away.
        `interleave`: other calls may use the model between two items (they are independent calls)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        room = threading.Semaphore(buffer)
        priority = current_priority()

        def produce() -> None:
            items = make_items()
            try:
                while (item := next(items, _DONE)) is not _DONE:
                    if not _handed_over(item, room, stop, loop, queue):
                        return
                    if interleave:
                        self._run_waiting(priority)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # on the model's thread: the generator's clean-up may touch the model

        def guarded() -> None:
            try:
                produce()
            except BaseException as exc:  # handed to the consumer, which re-raises it
                if not stop.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, exc)

        call = self._submit(guarded, priority)
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
            call.future.cancel()  # not started yet: it never will be
            # The thread exits at its next item; don't wait for it on cancellation.
            if call.future.done() and not call.future.cancelled():
                call.future.result()

    def shutdown(self) -> None:
        for lane in self._lanes():
            lane.pool.shutdown(wait=False, cancel_futures=True)


def _renice(nice: int) -> None:
    """Lower this thread's scheduling priority (Linux: niceness is per thread). Where that is not
    possible the thread keeps the normal priority: only the ordering by the queue is left."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as exc:
        extra = {"event": "worker_renice_failed", "error": str(exc)}
        log.warning("cannot lower a background thread's priority", extra=extra)


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
