"""TurnRecorder: one connection's bridge from its replies to the app's Tracer.

A turn is handed to the sinks once, when it is complete: at the end of its reply, or, for a
client that reports playback (the browser sends voxloop.playback.started), once that mark
has arrived too — or at the next reply or the session's end, whichever comes first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voxloop.tracing.base import Tracer, TurnText

if TYPE_CHECKING:
    from voxloop.pipeline.session import Session
    from voxloop.pipeline.trace import TurnTrace


class TurnRecorder:
    def __init__(self, tracer: Tracer, session: Session) -> None:
        self.tracer = tracer
        self.session = session
        self.reports_playback = False
        self._pending: tuple[TurnTrace, TurnText] | None = None
        self._recorded: TurnTrace | None = None

    def opened(self) -> None:
        self.tracer.session_opened(self.session)

    def closed(self) -> None:
        self._flush()
        self.tracer.session_closed(self.session)

    def reply_finished(self, trace: TurnTrace, assistant_text: str) -> None:
        if not trace.marks or trace is self._recorded or (self._pending and self._pending[0] is trace):
            return
        self._flush()
        self._pending = (trace, TurnText(self._last_user_text(), assistant_text))
        if "playback_start" in trace.marks or not self.reports_playback:
            self._flush()

    def playback_started(self, trace: TurnTrace) -> None:
        self.reports_playback = True
        if self._pending is not None and self._pending[0] is trace:
            self._flush()

    def interrupted(self, reason: str) -> None:
        self.tracer.interrupted(self.session, reason)

    def error(self, stage: str) -> None:
        self.tracer.error(self.session, stage)

    def _flush(self) -> None:
        if self._pending is None:
            return
        trace, text = self._pending
        self._pending, self._recorded = None, trace
        self.tracer.turn(trace, session=self.session, text=text)

    def _last_user_text(self) -> str:
        return next((m.content for m in reversed(self.session.history) if m.role == "user"), "")
