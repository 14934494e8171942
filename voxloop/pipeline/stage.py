"""The Stage contract.

A stage turns frames into frames. It names the frame types it `handles`; the runner forwards
every other frame untouched, so a stage never has to. Blocking inference belongs in a
`ModelWorker` (pipeline/workers.py), never on the event loop.

`start` loads models, `reset` drops per-turn state after an interrupt, `close` frees what the
stage holds. `StageBase` gives no-op defaults so a stage writes only what it needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from voxloop.pipeline.frames import Frame


@runtime_checkable
class Stage(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def handles(self) -> tuple[type[Frame], ...]: ...

    def process(self, frame: Frame) -> AsyncIterator[Frame]: ...

    async def start(self) -> None: ...

    async def reset(self) -> None: ...

    async def close(self) -> None: ...


class StageBase:
    """Defaults for the optional parts of the Stage protocol."""

    name: str = "stage"
    handles: tuple[type[Frame], ...] = ()

    def process(self, frame: Frame) -> AsyncIterator[Frame]:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def reset(self) -> None:
        return None

    async def close(self) -> None:
        return None
