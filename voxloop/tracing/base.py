"""The TraceSink protocol and the Tracer that fans a server's trace events out to its sinks.

A sink hears of sessions opening and closing, of each finished turn (its TurnTrace, and the
turn's words for sinks allowed to keep them), of interrupts and of stage errors. Sinks must
not block the event loop; a sink that raises is logged and the others still hear the event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from voxloop.pipeline.session import Session
    from voxloop.pipeline.trace import TurnTrace

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnText:
    """What was said in a turn; only sinks configured to keep text ever write it."""

    user: str = ""
    assistant: str = ""


class TraceSink(Protocol):
    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None: ...
    def session_opened(self, session: Session) -> None: ...
    def session_closed(self, session: Session) -> None: ...
    def interrupted(self, session: Session, reason: str) -> None: ...
    def error(self, session: Session, stage: str) -> None: ...
    def close(self) -> None: ...


class Tracer:
    """Every enabled sink, behind one TraceSink-shaped object."""

    def __init__(self, sinks: Sequence[TraceSink] = ()) -> None:
        self.sinks = list(sinks)

    def find(self, kind: type[object]) -> object | None:
        """The first sink of a type (e.g. the PrometheusSink serving /metrics), or None."""
        return next((sink for sink in self.sinks if isinstance(sink, kind)), None)

    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None:
        self._each("turn", lambda sink: sink.turn(trace, session=session, text=text))

    def session_opened(self, session: Session) -> None:
        self._each("session_opened", lambda sink: sink.session_opened(session))

    def session_closed(self, session: Session) -> None:
        self._each("session_closed", lambda sink: sink.session_closed(session))

    def interrupted(self, session: Session, reason: str) -> None:
        self._each("interrupted", lambda sink: sink.interrupted(session, reason))

    def error(self, session: Session, stage: str) -> None:
        self._each("error", lambda sink: sink.error(session, stage))

    def close(self) -> None:
        """Flush and release every sink (may block briefly: call it off the event loop)."""
        self._each("close", lambda sink: sink.close())

    def _each(self, what: str, call: Callable[[TraceSink], None]) -> None:
        for sink in self.sinks:
            try:
                call(sink)
            except Exception:
                log.exception(
                    "trace sink failed", extra={"event": "trace_sink_error", "sink": type(sink).__name__, "call": what}
                )
