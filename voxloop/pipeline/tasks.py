"""Task helpers that keep cancellation honest."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Future[object]) -> None:
    """Cancel tasks and wait until they have finished.

    Unlike `await task` under `suppress(CancelledError)`, this never swallows a cancellation
    aimed at the caller: `asyncio.wait` raises it, while the tasks' own CancelledError stays
    inside them. Errors the tasks raised while winding down are logged, not lost.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed while stopping", extra={"event": "task_error"}, exc_info=task.exception())
