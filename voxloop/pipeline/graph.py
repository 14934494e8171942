"""The graph runner: a chain of stages, one task each, joined by bounded lanes.

    push() ─► [lane] ─► stage 1 ─► [lane] ─► stage 2 ─► … ─► [lane] ─► frames()

A lane is a bounded data queue plus an unbounded control queue that is always read first, so
an interrupt or error overtakes queued audio and text. Each runner takes a frame from its
lane, forwards it if the stage does not handle it, and otherwise runs `stage.process(frame)`
in a child task that an interrupt can cancel without touching the runner itself.

On interrupt (Session.interrupt → Graph._on_interrupt): every lane drops data frames of older
epochs, every child task working on such a frame is cancelled and awaited (bounded), and an
Interrupt control frame is queued for each stage (which calls `stage.reset()`) and for the
output, whose reader tells the client to flush its playback. A stale frame that is `reported`
(the user's speech start and end, their final words) is not processed but still forwarded, so
the client hears what the user did even when a barge-in or a dropped speculation came first.

A speculative reply (pipeline/speculation.py) runs through the same stages; its output is
held by the output reader until the session confirms the turn, or flushed like an interrupt
(but unseen by the client) when the session drops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence

from voxloop.pipeline.errors import FatalError
from voxloop.pipeline.frames import EndOfInput, ErrorFrame, Frame, Interrupt
from voxloop.pipeline.session import Session
from voxloop.pipeline.speculation import ReplyHold, Speculation, SpeculationConfirmed
from voxloop.pipeline.stage import Stage
from voxloop.pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 0.5


class Lane:
    """A bounded FIFO of data frames with an unbounded priority lane for control frames."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: deque[Frame] = deque()
        self._control: deque[Frame] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._data) + len(self._control)

    async def put(self, frame: Frame) -> None:
        if frame.control:
            self._control.append(frame)
        else:
            while len(self._data) >= self.maxsize:
                self._writable.clear()
                await self._writable.wait()
            self._data.append(frame)
        self._readable.set()

    async def get(self) -> Frame:
        while not (self._control or self._data):
            self._readable.clear()
            await self._readable.wait()
        frame = self._control.popleft() if self._control else self._data.popleft()
        if len(self._data) < self.maxsize:
            self._writable.set()
        return frame

    def drop_stale(self, epoch: int) -> int:
        """Remove data frames that belong to an epoch before `epoch`; returns how many."""
        kept = [f for f in self._data if not is_dropped(f, epoch)]  # stale news stays: the runner forwards it
        dropped = len(self._data) - len(kept)
        self._data = deque(kept)
        if len(self._data) < self.maxsize:
            self._writable.set()
        return dropped


def is_stale(frame: Frame, epoch: int) -> bool:
    return frame.scoped and frame.epoch < epoch


def is_dropped(frame: Frame, epoch: int) -> bool:
    """Stale and no news for the client: the frame goes no further."""
    return is_stale(frame, epoch) and not frame.reported


class Graph:
    def __init__(self, session: Session, stages: Sequence[Stage], *, queue_size: int = 64) -> None:
        if not stages:
            raise ValueError("a graph needs at least one stage")
        self.session = session
        self.stages = list(stages)
        self._lanes = [Lane(queue_size) for _ in range(len(stages) + 1)]
        self._runners: list[asyncio.Task[None]] = []
        self._inflight: dict[int, tuple[Frame, asyncio.Task[None]]] = {}
        self.dropped = 0
        self._hold = ReplyHold()
        session.on_flush(self._on_interrupt)
        session.on_confirm(self._on_confirm)

    @property
    def output(self) -> Lane:
        return self._lanes[-1]

    async def start(self) -> None:
        """Start every stage (loading models), then one runner task per stage."""
        for stage in self.stages:
            await stage.start()
        for index, stage in enumerate(self.stages):
            task = asyncio.create_task(self._run(index), name=f"voxloop-stage-{stage.name}")
            self._runners.append(task)

    async def push(self, frame: Frame) -> None:
        """Feed a frame to the first stage; waits while the first lane is full (backpressure)."""
        await self._lanes[0].put(frame)

    async def frames(self) -> AsyncGenerator[Frame, None]:
        """The graph's output, stale frames already dropped, a speculative reply held until confirmed."""
        while True:
            frame = await self.output.get()
            if self._drops(frame):
                continue
            released = self._hold.through(frame, self.session.speculation, self.session.epoch)
            if isinstance(frame, SpeculationConfirmed) and frame.speculation is self.session.speculation:
                self.session.speculation_released()
            for out in released:
                yield out

    async def close(self) -> None:
        await cancel_and_wait(*self._runners)
        self._runners.clear()
        for stage in self.stages:
            await stage.close()

    async def __aenter__(self) -> Graph:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- runners ---------------------------------------------------------------------------

    async def _run(self, index: int) -> None:
        stage, inbox, outbox = self.stages[index], self._lanes[index], self._lanes[index + 1]
        while True:
            frame = await inbox.get()
            if self._drops(frame):
                continue
            if isinstance(frame, Interrupt):
                await stage.reset()  # the interrupt itself is queued for each lane by the graph
                if index == len(self.stages) - 1:
                    await outbox.put(frame)
                continue
            stale = is_stale(frame, self.session.epoch)  # and still news for the client: passed on unprocessed
            if frame.control or stale or not isinstance(frame, stage.handles):
                await outbox.put(frame)
                continue
            child = asyncio.create_task(self._process(stage, frame, outbox))
            self._inflight[index] = (frame, child)
            try:
                await child
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the runner itself is being cancelled
                # only the child was cancelled, by an interrupt: carry on with the next frame
            finally:
                self._inflight.pop(index, None)
            if isinstance(frame, EndOfInput):
                await outbox.put(frame)  # a stage flushes on the end of input; the end goes on

    async def _process(self, stage: Stage, frame: Frame, outbox: Lane) -> None:
        try:
            async for out in stage.process(frame):
                if not self._drops(out):
                    await outbox.put(out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "stage failed",
                extra={"event": "stage_error", "stage": stage.name, "error": type(exc).__name__},
                exc_info=exc,
            )
            message = str(exc) or type(exc).__name__
            error = self.session.make(ErrorFrame, stage=stage.name, message=message, fatal=isinstance(exc, FatalError))
            await outbox.put(error)

    def _drops(self, frame: Frame) -> bool:
        """`is_dropped`, counted in `dropped`."""
        dropped = is_dropped(frame, self.session.epoch)
        self.dropped += dropped
        return dropped

    async def _on_confirm(self, speculation: Speculation) -> None:
        await self.output.put(self.session.make(SpeculationConfirmed, speculation=speculation))

    async def _on_interrupt(self, epoch: int, reason: str) -> None:
        for lane in self._lanes:
            self.dropped += lane.drop_stale(epoch)
        cancelled = []
        for frame, child in list(self._inflight.values()):
            if is_stale(frame, epoch) and child is not asyncio.current_task():
                child.cancel()
                cancelled.append(child)
        for lane in self._lanes[:-1]:
            await lane.put(self.session.make(Interrupt, reason=reason))
        if cancelled:
            _, pending = await asyncio.wait(cancelled, timeout=CANCEL_TIMEOUT_S)
            if pending:
                log.error(
                    "stage ignored cancellation",
                    extra={"event": "cancel_timeout", "pending": len(pending)},
                )
