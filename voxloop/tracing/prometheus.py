"""PrometheusSink: per-app metrics for GET /metrics.

    voxloop_stage_seconds{stage}      histogram of each step's share of a turn (trace.SPANS labels)
    voxloop_voice_to_voice_seconds    histogram of speech_end → first_audio_sent
    voxloop_turns_total               turns finished (interrupted ones too)
    voxloop_interrupts_total{reason}  replies cut short (barge_in, cancel)
    voxloop_errors_total{stage}       stage errors reported to clients
    voxloop_sessions_opened_total     realtime sessions opened
    voxloop_sessions                  realtime sessions open now
    voxloop_late_input_frames_total   input frames that reached the VAD over 100 ms after arriving
    voxloop_llm_retries_total{reason} LLM requests retried before a first token (trace notes.llm_retries)

A debug view of what the process holds, read at scrape time, so a test or a soak run can tell
that a dropped client left nothing behind (counts only: nothing a user said or sent):

    voxloop_asyncio_tasks             tasks alive on the server's event loop
    voxloop_threads                   Python threads alive (model workers, executors)
    voxloop_peer_connections          WebRTC peer connections not yet closed (see `watch`)
    process_*                         prometheus_client's process collector: RSS, open fds, CPU (Linux)

Each sink owns its CollectorRegistry, so two apps in one process never share counts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

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
        self.llm_retries = Counter("voxloop_llm_retries", "LLM requests retried, by reason", ["reason"], registry=r)
        self.tasks = Gauge("voxloop_asyncio_tasks", "Tasks alive on the server's event loop", registry=r)
        self.tasks.set_function(_loop_tasks)
        self.threads = Gauge("voxloop_threads", "Python threads alive", registry=r)
        self.threads.set_function(threading.active_count)
        self.peers = Gauge("voxloop_peer_connections", "WebRTC peer connections not yet closed", registry=r)
        ProcessCollector(registry=r)

    def watch(self, *, peer_connections: Callable[[], int]) -> None:
        """Read the app's live counts at scrape time (the sink itself knows no server objects)."""
        self.peers.set_function(peer_connections)

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
        for reason in trace.notes.get("llm_retries", ()):
            self.llm_retries.labels(reason=reason).inc()

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


def _loop_tasks() -> int:
    """Tasks on the running loop; 0 when scraped off the loop (no running loop in this thread)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
