"""PrometheusSink: per-app metrics for GET /metrics.

    voxloop_stage_seconds{stage}      histogram of each step's share of a turn (trace.SPANS labels)
    voxloop_voice_to_voice_seconds    histogram of speech_end → first_audio_sent
    voxloop_turns_total               turns finished (interrupted ones too)
    voxloop_interrupts_total{reason}  replies cut short (barge_in, cancel)
    voxloop_errors_total{stage}       stage errors reported to clients
    voxloop_sessions_opened_total     realtime sessions opened
    voxloop_sessions                  realtime sessions open now
    voxloop_late_input_frames_total   input frames that reached the VAD over 100 ms after arriving

Each sink owns its CollectorRegistry, so two apps in one process never share counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from voxloop.pipeline.session import Session
    from voxloop.pipeline.trace import TurnTrace
    from voxloop.tracing.base import TurnText

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
V2V_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0)


class PrometheusSink:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage = Histogram(
            "voxloop_stage_seconds", "Each step's share of a turn", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.v2v = Histogram(
            "voxloop_voice_to_voice_seconds", "End of speech to first reply audio sent", buckets=V2V_BUCKETS, registry=r
        )
        self.turns = Counter("voxloop_turns", "Turns finished", registry=r)
        self.interrupts = Counter("voxloop_interrupts", "Replies cut short", ["reason"], registry=r)
        self.errors = Counter("voxloop_errors", "Stage errors", ["stage"], registry=r)
        self.sessions_opened = Counter("voxloop_sessions_opened", "Realtime sessions opened", registry=r)
        self.sessions_open = Gauge("voxloop_sessions", "Realtime sessions open now", registry=r)
        self.late_input = Counter(
            "voxloop_late_input_frames", "Input frames that reached the VAD over 100 ms after arriving", registry=r
        )

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None:
        self.turns.inc()
        for stage, ms in trace.spans_ms().items():
            self.stage.labels(stage=stage).observe(max(ms, 0.0) / 1000)
        if trace.voice_to_voice_ms is not None:
            self.v2v.observe(max(trace.voice_to_voice_ms, 0.0) / 1000)
        self.late_input.inc(trace.notes.get("late_input_frames", 0))

    def session_opened(self, session: Session) -> None:
        self.sessions_opened.inc()
        self.sessions_open.inc()

    def session_closed(self, session: Session) -> None:
        self.sessions_open.dec()

    def interrupted(self, session: Session, reason: str) -> None:
        self.interrupts.labels(reason=reason).inc()

    def error(self, session: Session, stage: str) -> None:
        self.errors.labels(stage=stage).inc()

    def close(self) -> None:
        pass
