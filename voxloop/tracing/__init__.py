"""Where turn traces go: a JSONL file, Prometheus /metrics, OpenTelemetry spans.

    tracer = build_tracer(settings)      # the sinks settings.trace enables, behind one Tracer
    TurnRecorder(tracer, session)        # per connection: hands each finished turn over once

Settings read (settings.trace): jsonl (path or None), include_text, prometheus (default on),
otel (None = on when OTEL_EXPORTER_OTLP_ENDPOINT is set and opentelemetry is installed).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from voxloop.pipeline.errors import ConfigError
from voxloop.tracing.base import Tracer, TraceSink, TurnText
from voxloop.tracing.recorder import TurnRecorder

if TYPE_CHECKING:
    from voxloop.pipeline.config import Settings
    from voxloop.tracing.prometheus import PrometheusSink

__all__ = ["TraceSink", "Tracer", "TurnRecorder", "TurnText", "build_sinks", "build_tracer", "prometheus_sink"]

log = logging.getLogger(__name__)


def build_sinks(settings: Settings) -> list[TraceSink]:
    """The sinks settings.trace asks for; a bad JSONL path or a missing extra fails here, at startup."""
    trace = settings.trace
    sinks: list[TraceSink] = []
    jsonl = trace.jsonl
    if jsonl:
        from voxloop.tracing.jsonl import JsonlSink

        try:
            sinks.append(JsonlSink(jsonl, include_text=trace.include_text))
        except OSError as error:
            raise ConfigError(f"trace.jsonl: cannot append to {jsonl}: {error}; set it to a writable file") from error
    if trace.prometheus:
        from voxloop.tracing.prometheus import PrometheusSink

        sinks.append(PrometheusSink())
    otel = _otel_sink(trace.otel)
    if otel is not None:
        sinks.append(otel)
    log.info("trace sinks ready", extra={"event": "trace_sinks", "sinks": [type(s).__name__ for s in sinks]})
    return sinks


def build_tracer(settings: Settings) -> Tracer:
    return Tracer(build_sinks(settings))


def prometheus_sink(tracer: Tracer) -> PrometheusSink | None:
    from voxloop.tracing.prometheus import PrometheusSink

    sink = tracer.find(PrometheusSink)
    return sink if isinstance(sink, PrometheusSink) else None


def _otel_sink(setting: bool | None) -> TraceSink | None:
    """trace.otel: True exports spans (the extra must be installed), False never, None when OTEL_* names a collector."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if setting is False or (setting is None and not endpoint):
        return None
    try:
        from voxloop.tracing.otel import OtelSink, otlp_provider
    except ImportError as error:
        message = f"OpenTelemetry spans need the otel extra ({error.name} is missing): pip install 'voxloop[otel]'"
        if setting:
            raise ConfigError(f"trace.otel: {message}") from error
        log.warning("OTLP endpoint set but no OpenTelemetry", extra={"event": "trace_otel_missing"})
        return None
    return OtelSink(otlp_provider())
