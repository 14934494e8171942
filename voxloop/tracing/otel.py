"""OtelSink: OpenTelemetry spans, conversation → turn → step (needs the `otel` extra).

One `voxloop.conversation` span per session, open from session start to end; each finished
turn becomes a `voxloop.turn` child spanning its first to last mark, with one child per step
(trace.SPANS: endpoint_delay, stt, llm_first_token, ...) timed from the marks themselves.
Marks are monotonic; they are moved onto the wall clock when the turn is exported.

`otlp_provider()` builds a TracerProvider exporting over OTLP/HTTP, configured by the
standard environment (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, ...).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from voxloop import __version__
from voxloop.pipeline.trace import SPANS

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from voxloop.pipeline.session import Session
    from voxloop.pipeline.trace import TurnTrace
    from voxloop.tracing.base import TurnText


def otlp_provider() -> TracerProvider:
    """A provider exporting batches over OTLP/HTTP to the collector the OTEL_* environment names."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "voxloop", "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class OtelSink:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("voxloop", __version__)
        self.conversations: dict[str, Span] = {}

    def session_opened(self, session: Session) -> None:
        span = self.tracer.start_span("voxloop.conversation", attributes={"voxloop.session_id": session.id})
        self.conversations[session.id] = span

    def session_closed(self, session: Session) -> None:
        span = self.conversations.pop(session.id, None)
        if span is not None:
            span.set_attribute("voxloop.interrupts", session.interrupts)
            span.end()

    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None:
        if not trace.marks:
            return
        to_wall = time.time_ns() - session.now_ns()  # monotonic mark + this = wall-clock ns
        parent = self.conversations.get(session.id)
        context = otel_trace.set_span_in_context(parent) if parent is not None else None
        start, end = min(trace.marks.values()) + to_wall, max(trace.marks.values()) + to_wall
        turn = self.tracer.start_span("voxloop.turn", context=context, start_time=start)
        turn.set_attribute("voxloop.session_id", trace.session_id)
        turn.set_attribute("voxloop.turn_id", trace.turn_id)
        if trace.voice_to_voice_ms is not None:
            turn.set_attribute("voxloop.voice_to_voice_ms", trace.voice_to_voice_ms)
        if "interrupted" in trace.notes:
            turn.set_attribute("voxloop.interrupted", str(trace.notes["interrupted"]))
        steps = otel_trace.set_span_in_context(turn)
        for label, first, last in SPANS:
            if first in trace.marks and last in trace.marks:
                step = self.tracer.start_span(
                    f"voxloop.{label}", context=steps, start_time=trace.marks[first] + to_wall
                )
                step.end(end_time=trace.marks[last] + to_wall)
        turn.end(end_time=end)

    def interrupted(self, session: Session, reason: str) -> None:
        span = self.conversations.get(session.id)
        if span is not None:
            span.add_event("voxloop.interrupt", {"reason": reason})

    def error(self, session: Session, stage: str) -> None:
        span = self.conversations.get(session.id)
        if span is not None:
            span.add_event("voxloop.stage_error", {"stage": stage})

    def close(self) -> None:
        for span in self.conversations.values():
            span.end()
        self.conversations.clear()
        self.provider.shutdown()
