"""Running blocking model code off the event loop.

A ModelWorker owns a small thread pool for one loaded model, shared by every session that
uses the model. `run` awaits one blocking call; `stream` turns a blocking generator (LLM
tokens, TTS audio) into an async iterator whose cancellation stops the generator at its next
item, so a barge-in frees the model within one token or one audio block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_DONE = object()


class ModelWorker:
    """A bounded executor for one model. `max_workers` > 1 only for models that are thread-safe."""

    def __init__(self, name: str, max_workers: int = 1) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"voxloop-{name}")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def stream(self, make_items: Callable[[], Iterator[T]], *, buffer: int = 64) -> AsyncGenerator[T, None]:
        """Iterate a blocking generator in the pool; stop it when the consumer goes away."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        room = threading.Semaphore(buffer)

        def produce() -> None:
            try:
                for item in make_items():
                    # Backpressure without blocking forever: re-check `stop` while waiting.
                    while not room.acquire(timeout=0.05):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
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

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
