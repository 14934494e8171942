"""Clocks. Sessions take one so that timing logic can be tested on a virtual clock.

`LoopClock` reads the event loop's monotonic time, which is what `asyncio.sleep` waits on: in
production it is the system's monotonic clock, and under a time-faking loop (the `looptime`
pytest plugin) scripted delays run instantly yet measure exactly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    def now_ns(self) -> int:
        return time.monotonic_ns()


class LoopClock:
    def now_ns(self) -> int:
        return int(asyncio.get_running_loop().time() * 1e9)


class ManualClock:
    """A clock that reads whatever it is set to: for replaying recorded audio at its own pace."""

    def __init__(self, t_ns: int = 0) -> None:
        self.t_ns = t_ns

    def now_ns(self) -> int:
        return self.t_ns
