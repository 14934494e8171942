"""The soak run: N simulated users for D minutes plus M connect/disconnect cycles, watching for leaks.

    scripts/soak [--users 8] [--minutes 10] [--cycles 200] [--url http://HOST:PORT]
                 [--conversation dev_conv01_turns] [--start 0] [--pass-s 60] [--rss-band-mib 400]
                 [--window-s 60] [--out out/soak.json]

Each user streams a real conversation excerpt from ../shared/eval at real-time pace (the benchmark's
simulated user), pass after pass, one connection per pass; alongside, sequential cycles connect, send
some audio or not, and disconnect cleanly or abruptly. The server's /metrics is sampled every 2 s.
Loopback only: it starts its own `voxloop serve` unless --url names one (whose /metrics must be open).
Writes a JSON result, prints a summary, and exits 1 when a check fails: tasks, threads or fds not back
to the warm-up baseline once every client is gone, RSS over the band, or unexpected errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voxloop.bench.conversation import load_conversation
from voxloop.bench.soak import SoakPlan, report, run_soak
from voxloop.pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8, help="simulated users at once (default 8)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the users go on (default 10)")
    parser.add_argument("--cycles", type=int, default=200, help="connect/disconnect cycles (default 200)")
    parser.add_argument("--url", help="soak this running server (loopback) instead of starting one")
    parser.add_argument("--conversation", default="dev_conv01_turns", help="a conv_id of conversations.tsv")
    parser.add_argument("--start", type=float, default=0.0, help="where in the conversation a pass starts (s)")
    parser.add_argument("--pass-s", type=float, default=60.0, help="seconds of the conversation per pass")
    parser.add_argument("--rss-band-mib", type=float, default=400.0, help="allowed RSS rise over warm-up (MiB)")
    parser.add_argument("--window-s", type=float, default=60.0, help="voice-to-voice p95 per window of this long")
    parser.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "soak.json")
    args = parser.parse_args(argv)
    if args.users < 0 or args.minutes <= 0 or args.cycles < 0 or args.pass_s <= 0 or args.window_s <= 0:
        parser.error("--users and --cycles must be >= 0; --minutes, --pass-s and --window-s > 0")
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback server (http://127.0.0.1:PORT): the soak is not a load test for hosts")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        conversation = load_conversation(args.eval_dir, args.conversation).excerpt(args.start, args.pass_s)
        plan = SoakPlan(
            args.users,
            args.minutes * 60,
            args.cycles,
            conversation,
            args.url,
            args.out.parent / "soak_logs",
            rss_band_mib=args.rss_band_mib,
            window_s=args.window_s,
        )
        result = run_soak(plan)
    except (InputError, RuntimeError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"wrote {args.out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
