"""An event-loop lag monitor: how late the loop wakes a task that asked to sleep.

A stage that runs blocking work on the loop shows up here as lag. The monitor sleeps for
`interval_s` again and again and records how much later than asked it woke.
"""

from __future__ import annotations

import asyncio
import statistics
from collections import deque
from types import TracebackType

from voxloop.pipeline.tasks import cancel_and_wait


class LoopLagMonitor:
    def __init__(self, interval_s: float = 0.005, *, window: int | None = None) -> None:
        """`window`: keep only the latest this many samples (a long-running server); None keeps all."""
        self.interval_s = interval_s
        self.lags_ms: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self.lags_ms.append(max(0.0, (loop.time() - start - self.interval_s) * 1000))

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="voxloop-loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def __aenter__(self) -> LoopLagMonitor:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def max_ms(self) -> float:
        return max(self.lags_ms, default=0.0)

    def percentile_ms(self, q: float) -> float:
        if len(self.lags_ms) < 2:
            return self.max_ms
        return statistics.quantiles(self.lags_ms, n=100, method="inclusive")[int(q) - 1]

    def summary(self) -> dict[str, float]:
        """p50, p99 and max lag in ms over the samples kept."""
        return {"p50": self.percentile_ms(50), "p99": self.percentile_ms(99), "max": self.max_ms}
