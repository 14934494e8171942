"""`voxloop trace report`: percentiles per step from a traces JSONL file, and charts of them.

A line that is not a JSON object with a `spans_ms` mapping is skipped and counted, so one
torn write (a server killed mid-line) does not hide the rest of the file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxloop.pipeline.errors import VoxloopError
from voxloop.pipeline.trace import SPANS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

V2V = "voice_to_voice"
STEPS: tuple[str, ...] = (*(label for label, _, _ in SPANS), V2V)
PERCENTILES = (50, 90, 95)


class ReportError(VoxloopError):
    pass


@dataclass(frozen=True)
class Traces:
    path: Path
    records: list[dict[str, Any]]
    bad_lines: int

    def samples(self) -> dict[str, list[float]]:
        """Each step's durations in ms (voice_to_voice too), in file order; steps never seen are left out."""
        out: dict[str, list[float]] = {step: [] for step in STEPS}
        for record in self.records:
            for step, ms in record["spans_ms"].items():
                if isinstance(ms, int | float):
                    out.setdefault(step, []).append(float(ms))
            v2v = record.get("voice_to_voice_ms")
            if isinstance(v2v, int | float):
                out[V2V].append(float(v2v))
        return {step: values for step, values in out.items() if values}


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float
    p90: float
    p95: float
    max: float


def load(path: Path | str) -> Traces:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file; pass the trace.jsonl file the server wrote") from None
    except (IsADirectoryError, PermissionError) as error:
        raise ReportError(f"{path}: cannot read it ({error.strerror}); pass a traces JSONL file") from None
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("spans_ms"), dict):
            records.append(record)
        else:
            bad += 1
    if not records:
        raise ReportError(f"{path}: no turn traces in it ({bad} unreadable lines); is it a voxloop trace JSONL file?")
    return Traces(path, records, bad)


def stats(samples: dict[str, list[float]]) -> dict[str, Stats]:
    out = {}
    for step, values in samples.items():
        p50, p90, p95 = (float(v) for v in np.percentile(values, PERCENTILES))
        out[step] = Stats(len(values), p50, p90, p95, max(values))
    return out


def table(summary: dict[str, Stats]) -> str:
    rows = [f"{'step':<18}{'n':>6}{'p50':>9}{'p90':>9}{'p95':>9}{'max':>9}   (ms)"]
    for step, s in summary.items():
        rows.append(f"{step:<18}{s.count:>6}{s.p50:>9.0f}{s.p90:>9.0f}{s.p95:>9.0f}{s.max:>9.0f}")
    return "\n".join(rows)


def figure(samples: dict[str, list[float]]) -> Figure:
    """Box plots of each step (left) and a histogram of voice-to-voice (right)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    steps, v2v = fig.subplots(1, 2, width_ratios=(3, 2))
    names = [step for step in samples if step != V2V]
    steps.boxplot([samples[n] for n in names], orientation="horizontal", tick_labels=names, showfliers=True)
    steps.set(xlabel="ms", title="each step's share of a turn")
    steps.invert_yaxis()
    if V2V in samples:
        v2v.hist(samples[V2V], bins=min(30, max(5, len(samples[V2V]) // 2)), color="#4a7bd0")
        for p in PERCENTILES:
            value = float(np.percentile(samples[V2V], p))
            v2v.axvline(value, color="#c0392b", linestyle=":", linewidth=1)
            v2v.annotate(f"p{p}", (value, 0), xytext=(2, 2), textcoords="offset points", fontsize=8)
    v2v.set(xlabel="ms", ylabel="turns", title="voice-to-voice")
    return fig


def write_png(samples: dict[str, list[float]], out: Path) -> None:
    figure(samples).savefig(out, format="png", dpi=110)


def write_html(traces: Traces, summary: dict[str, Stats], out: Path) -> None:
    buffer = io.BytesIO()
    figure(traces.samples()).savefig(buffer, format="png", dpi=110)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    rows = "".join(
        f"<tr><th>{html.escape(step)}</th><td>{s.count}</td><td>{s.p50:.0f}</td><td>{s.p90:.0f}</td>"
        f"<td>{s.p95:.0f}</td><td>{s.max:.0f}</td></tr>"
        for step, s in summary.items()
    )
    out.write_text(
        "<!doctype html><html lang=en><meta charset=utf-8><title>voxloop trace report</title>"
        "<style>body{font:14px system-ui;margin:2em}td,th{padding:2px 10px;text-align:right}"
        "th{text-align:left}img{max-width:100%}</style>"
        f"<h1>voxloop trace report</h1><p>{html.escape(str(traces.path))}: {len(traces.records)} turns"
        f"{f', {traces.bad_lines} unreadable lines skipped' if traces.bad_lines else ''}</p>"
        "<table><tr><th>step</th><th>n</th><th>p50 ms</th><th>p90 ms</th><th>p95 ms</th><th>max ms</th></tr>"
        f"{rows}</table><img alt='distributions of each step and of voice-to-voice' "
        f"src='data:image/png;base64,{image}'></html>\n",
        encoding="utf-8",
    )
