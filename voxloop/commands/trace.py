"""`voxloop trace report traces.jsonl [--html out.html | --png out.png]`: latency percentiles per step."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def report(args: argparse.Namespace) -> int:
    from voxloop.tracing import report as rep

    traces = rep.load(args.path)
    summary = rep.stats(traces.samples())
    print(f"{traces.path}: {len(traces.records)} turns")
    if traces.bad_lines:
        print(f"skipped {traces.bad_lines} unreadable lines", file=sys.stderr)
    print(rep.table(summary))
    out: Path | None = args.html or args.png
    if out is not None:
        try:
            if args.html:
                rep.write_html(traces, summary, out)
            else:
                rep.write_png(traces.samples(), out)
        except OSError as error:
            raise rep.ReportError(f"{out}: cannot write the report ({error.strerror}); pick a writable path") from None
        print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("trace", help="read latency traces the server wrote (trace.jsonl)")
    actions = parser.add_subparsers(dest="trace_command", required=True)
    rep = actions.add_parser("report", help="percentiles per step; optionally an HTML or PNG chart of them")
    rep.add_argument("path", type=Path, help="the traces JSONL file (settings trace.jsonl)")
    out = rep.add_mutually_exclusive_group()
    out.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    out.add_argument("--png", type=Path, help="write a PNG of the distributions here")
    rep.set_defaults(func=report)
