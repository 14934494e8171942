"""JsonlSink: one JSON line per finished turn, appended by a writer thread.

The event loop only puts the line on a queue; a daemon thread appends and flushes it, so a
slow disk never stalls a conversation. The user's and assistant's words are written only when
the sink was built with include_text=True (settings.trace.include_text).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxloop.pipeline.session import Session
    from voxloop.pipeline.trace import TurnTrace
    from voxloop.tracing.base import TurnText

log = logging.getLogger(__name__)

_STOP = object()


def turn_record(trace: TurnTrace, text: TurnText | None, *, include_text: bool) -> dict[str, Any]:
    """The JSON object written for one turn."""
    record: dict[str, Any] = {"ts": round(time.time(), 3), **trace.to_dict()}
    if include_text and text is not None:
        record["text"] = {"user": text.user, "assistant": text.assistant}
    return record


class JsonlSink:
    def __init__(self, path: Path | str, *, include_text: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.include_text = include_text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")  # fails now, at startup, if unwritable
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._write_all, name="voxloop-trace-jsonl", daemon=True)
        self._thread.start()

    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None:
        line = json.dumps(turn_record(trace, text, include_text=self.include_text), separators=(",", ":"))
        self._queue.put(line)

    def session_opened(self, session: Session) -> None:
        pass

    def session_closed(self, session: Session) -> None:
        pass

    def interrupted(self, session: Session, reason: str) -> None:
        pass

    def error(self, session: Session, stage: str) -> None:
        pass

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (blocking) until every line queued so far is on disk."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout=5.0)

    def _write_all(self) -> None:
        with self._file:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                try:
                    self._file.write(f"{item}\n")
                    self._file.flush()
                except OSError as error:
                    log.error("trace line not written", extra={"event": "trace_jsonl_error", "error": str(error)})
