"""Trace sinks (JSONL, Prometheus, OpenTelemetry), the per-connection recorder and `voxloop trace report`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voxloop.commands import trace as trace_command
from voxloop.pipeline.clock import ManualClock
from voxloop.pipeline.config import Settings
from voxloop.pipeline.errors import ConfigError
from voxloop.pipeline.session import Session
from voxloop.pipeline.trace import TURN_MARKS, TurnTrace
from voxloop.tracing import Tracer, TurnRecorder, TurnText, build_sinks
from voxloop.tracing.jsonl import JsonlSink
from voxloop.tracing.otel import OtelSink
from voxloop.tracing.prometheus import PrometheusSink
from voxloop.tracing.report import ReportError, load, stats

MS = 1_000_000
# Each mark's offset from speech_end, in ms: endpoint_delay 500, stt 200, llm 150, chunk 100, tts 80, send 20.
OFFSETS = (0, 500, 700, 850, 950, 1030, 1050, 1120)


def make_trace(session: Session, turn_id: int, *, scale: float = 1.0, start_ms: int = 10_000) -> TurnTrace:
    trace = TurnTrace(session.id, turn_id)
    for name, offset in zip(TURN_MARKS, OFFSETS, strict=True):
        trace.mark(name, (start_ms + round(offset * scale)) * MS)
    return trace


@pytest.fixture
def session() -> Session:
    return Session(session_id="s1", clock=ManualClock(20_000 * MS))


def test_jsonl_writes_one_line_per_turn_without_text_by_default(tmp_path: Path, session: Session) -> None:
    sink = JsonlSink(tmp_path / "t" / "traces.jsonl")
    sink.turn(make_trace(session, 1), session=session, text=TurnText("my secret question", "an answer"))
    sink.turn(make_trace(session, 2, scale=2), session=session)
    sink.close()
    content = (tmp_path / "t" / "traces.jsonl").read_text()
    lines = [json.loads(line) for line in content.splitlines()]
    assert [line["turn_id"] for line in lines] == [1, 2]
    assert lines[0]["voice_to_voice_ms"] == pytest.approx(1050)
    assert lines[1]["spans_ms"]["stt"] == pytest.approx(400)
    assert lines[0]["marks_ms"]["playback_start"] == pytest.approx(1120)
    assert "secret" not in content and "answer" not in content and "text" not in lines[0]


def test_jsonl_keeps_text_only_when_configured(tmp_path: Path, session: Session) -> None:
    sink = JsonlSink(tmp_path / "traces.jsonl", include_text=True)
    sink.turn(make_trace(session, 1), session=session, text=TurnText("what time is it", "noon"))
    sink.flush()
    line = json.loads((tmp_path / "traces.jsonl").read_text())
    assert line["text"] == {"user": "what time is it", "assistant": "noon"}
    sink.close()


def test_prometheus_histograms_and_counters(session: Session) -> None:
    sink = PrometheusSink()
    sink.session_opened(session)
    for turn_id, scale in enumerate((0.3, 0.6, 1.0), start=1):  # voice-to-voice 315, 630, 1050 ms
        sink.turn(make_trace(session, turn_id, scale=scale), session=session)
    sink.interrupted(session, "barge_in")
    sink.error(session, "tts")
    text = sink.exposition().decode()
    assert 'voxloop_voice_to_voice_seconds_bucket{le="0.25"} 0.0' in text
    assert 'voxloop_voice_to_voice_seconds_bucket{le="0.5"} 1.0' in text
    assert 'voxloop_voice_to_voice_seconds_bucket{le="1.0"} 2.0' in text
    assert 'voxloop_voice_to_voice_seconds_bucket{le="+Inf"} 3.0' in text
    assert "voxloop_voice_to_voice_seconds_count 3.0" in text
    assert "voxloop_voice_to_voice_seconds_sum 1.995" in text
    assert 'voxloop_stage_seconds_bucket{le="0.1",stage="stt"} 1.0' in text  # 60 ms; 120 and 200 ms above
    assert 'voxloop_stage_seconds_count{stage="playback"} 3.0' in text
    assert "voxloop_turns_total 3.0" in text
    assert 'voxloop_interrupts_total{reason="barge_in"} 1.0' in text
    assert 'voxloop_errors_total{stage="tts"} 1.0' in text
    assert "voxloop_sessions 1.0" in text and "voxloop_sessions_opened_total 1.0" in text
    sink.session_closed(session)
    assert "voxloop_sessions 0.0" in sink.exposition().decode()
    assert "voxloop_turns_total 0.0" in PrometheusSink().exposition().decode()  # registries are not shared


def test_otel_spans_nest_conversation_turn_steps_with_mark_durations(session: Session) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sink = OtelSink(provider)
    sink.session_opened(session)
    sink.turn(make_trace(session, 1), session=session)
    sink.session_closed(session)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    conversation, turn = spans["voxloop.conversation"], spans["voxloop.turn"]
    assert turn.parent is not None and turn.parent.span_id == conversation.context.span_id
    assert turn.context.trace_id == conversation.context.trace_id
    assert turn.attributes is not None and turn.attributes["voxloop.voice_to_voice_ms"] == pytest.approx(1050)
    assert turn.end_time is not None and turn.start_time is not None
    assert (turn.end_time - turn.start_time) / MS == pytest.approx(1120)
    expected = {"endpoint_delay": 500, "stt": 200, "llm_first_token": 150, "first_chunk": 100}
    expected |= {"tts_first_audio": 80, "send": 20, "playback": 70}
    for step, ms in expected.items():
        span = spans[f"voxloop.{step}"]
        assert span.parent is not None and span.parent.span_id == turn.context.span_id
        assert span.end_time is not None and span.start_time is not None
        assert (span.end_time - span.start_time) / MS == pytest.approx(ms)
    assert len(spans) == 2 + len(expected)
    provider.shutdown()


class Recording:
    """A sink that remembers what it heard."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def turn(self, trace: TurnTrace, *, session: Session, text: TurnText | None = None) -> None:
        self.calls.append(("turn", (trace.turn_id, text)))

    def session_opened(self, session: Session) -> None:
        self.calls.append(("opened", session.id))

    def session_closed(self, session: Session) -> None:
        self.calls.append(("closed", session.id))

    def interrupted(self, session: Session, reason: str) -> None:
        self.calls.append(("interrupted", reason))

    def error(self, session: Session, stage: str) -> None:
        self.calls.append(("error", stage))

    def close(self) -> None:
        raise RuntimeError("a broken sink")


def test_recorder_waits_for_playback_from_clients_that_report_it(session: Session) -> None:
    sink = Recording()
    recorder = TurnRecorder(Tracer([sink]), session)
    session.user_said("hello there")
    first = make_trace(session, 1)
    recorder.reply_finished(first, "hi")  # no playback reports yet: recorded at once
    recorder.reply_finished(first, "hi")  # a second response.done for the same turn: not again
    recorder.playback_started(first)
    second = TurnTrace(session.id, 2, marks={"speech_end": 0, "first_audio_sent": 5 * MS})
    recorder.reply_finished(second, "later")  # this client reports playback: wait for it
    assert [c for c in sink.calls if c[0] == "turn"] == [("turn", (1, TurnText("hello there", "hi")))]
    recorder.playback_started(second)
    third = TurnTrace(session.id, 3, marks={"speech_end": 0})
    recorder.reply_finished(third, "cut")  # never played: flushed when the session ends
    recorder.closed()
    assert [c[1][0] for c in sink.calls if c[0] == "turn"] == [1, 2, 3]  # type: ignore[index]
    assert sink.calls[-1] == ("closed", "s1")


def test_tracer_keeps_going_when_a_sink_fails(tmp_path: Path, session: Session) -> None:
    jsonl = JsonlSink(tmp_path / "traces.jsonl")
    tracer = Tracer([Recording(), jsonl])
    tracer.turn(make_trace(session, 1), session=session)
    tracer.close()  # Recording.close raises; the JSONL sink still flushes and closes
    assert len((tmp_path / "traces.jsonl").read_text().splitlines()) == 1


def test_build_sinks_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert [type(s).__name__ for s in build_sinks(Settings())] == ["PrometheusSink"]
    sinks = build_sinks(Settings.model_validate({"trace": {"jsonl": tmp_path / "a.jsonl"}}))
    assert [type(s).__name__ for s in sinks] == ["JsonlSink", "PrometheusSink"]
    Tracer(sinks).close()
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ConfigError, match=r"trace.jsonl: cannot append to .*dir.jsonl"):
        build_sinks(Settings.model_validate({"trace": {"jsonl": tmp_path / "dir.jsonl"}}))


# -- voxloop trace report ------------------------------------------------------------------


@pytest.fixture
def traces_file(tmp_path: Path, session: Session) -> Path:
    path = tmp_path / "traces.jsonl"
    sink = JsonlSink(path)
    for turn_id in range(1, 11):  # voice-to-voice 105, 210, ..., 1050 ms
        sink.turn(make_trace(session, turn_id, scale=turn_id / 10), session=session)
    sink.close()
    with path.open("a") as file:
        file.write('{"torn line\n[1, 2]\n\n')
    return path


def test_report_percentiles_on_known_data(traces_file: Path) -> None:
    traces = load(traces_file)
    assert len(traces.records) == 10 and traces.bad_lines == 2
    summary = stats(traces.samples())
    v2v = summary["voice_to_voice"]
    assert (v2v.count, v2v.p50, v2v.p90, v2v.p95, v2v.max) == pytest.approx((10, 577.5, 955.5, 1002.75, 1050))
    assert summary["stt"].p50 == pytest.approx(110)  # stt: 20, 40, ..., 200 ms
    assert next(iter(summary)) == "endpoint_delay"


def run_report(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    trace_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["trace", "report", *argv])
    code: int = args.func(args)
    return code


def test_report_command_prints_table_and_writes_html(
    traces_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert run_report(str(traces_file), "--html", str(out)) == 0
    printed = capsys.readouterr()
    assert "10 turns" in printed.out and "skipped 2 unreadable lines" in printed.err
    row = next(line for line in printed.out.splitlines() if line.startswith("voice_to_voice"))
    assert row.split()[1:] == ["10", "578", "956", "1003", "1050"]
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64,iVBOR" in page
    assert "<th>voice_to_voice</th><td>10</td><td>578</td>" in page


def test_report_command_writes_png(traces_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    assert run_report(str(traces_file), "--png", str(out)) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_report_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such file"):
        load(tmp_path / "missing.jsonl")
    (tmp_path / "junk.jsonl").write_text("not json\n{}\n")
    with pytest.raises(ReportError, match=r"no turn traces in it \(2 unreadable lines\)"):
        load(tmp_path / "junk.jsonl")
