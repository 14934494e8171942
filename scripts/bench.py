"""The concurrency benchmark: N simulated users talk to a real voxloop server over the realtime protocol.

    scripts/bench [--users 1,4] [--duration 60] [--llm embedded,external] [--transport websocket,webrtc]
                  [--llm-server llama-server|llama_cpp.server] [--stagger 3] [--rounds 1]
                  [--url http://HOST:PORT] [--conversation dev_conv01_turns] [--start 0] [--no-ladder]
                  [--out out/bench.json]

Each user streams a real conversation from ../shared/eval at real-time pace with its natural
pauses, waiting (microphone open, on silence) for each reply to finish playing. Then one user
streams the pause-ladder recording as recorded, to score false endpoints. Writes a JSON result
and a PNG plot next to it. With several user counts (--users 1,4) it also prints each count's
p95 voice-to-voice as a multiple of the first count's, measured in the same sitting. Every
process it starts is stopped at the end, also on Ctrl-C. Figures, not pass/fail: on a shared
machine compare runs taken together. A VOXLOOP_* variable
in the environment wins over the bench's own server settings, for A/B runs of one setting.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from voxloop.bench.conversation import load_conversation
from voxloop.bench.plot import plot
from voxloop.bench.procs import LLM_NICE
from voxloop.bench.run import Plan, run_plan
from voxloop.bench.stats import scaling
from voxloop.pipeline.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
LADDER = "dev_conv02_pause_ladder"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users", default="1", help="simulated users at once, or a comma-separated list of counts to run in turn"
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each recording to use (default 60)")
    parser.add_argument("--start", type=float, default=0.0, help="where in the conversation to start (s)")
    parser.add_argument("--conversation", default="dev_conv01_turns", help="a conv_id of conversations.tsv")
    parser.add_argument("--llm", default="embedded,external", help="embedded, external or both (comma-separated)")
    parser.add_argument(
        "--llm-server",
        default="llama-server",
        choices=["llama-server", "llama_cpp.server"],
        help="the external LLM server: llama.cpp's llama-server with one slot per user (built by "
        "scripts/build_llama_server when missing, ~8 min once) or llama-cpp-python's, which has one slot",
    )
    parser.add_argument(
        "--llm-threads",
        type=int,
        help="threads of the llama-server the benchmark starts (default: one per four cores, at least one)",
    )
    parser.add_argument(
        "--llm-nice",
        type=int,
        default=LLM_NICE,
        help=f"niceness of the LLM server the benchmark starts (default {LLM_NICE}: ahead of voxloop's models; "
        "needs root or CAP_SYS_NICE, else it runs at the bench's own)",
    )
    parser.add_argument("--transport", default="websocket", help="websocket, webrtc or both (comma-separated)")
    parser.add_argument(
        "--stagger",
        type=float,
        default=3.0,
        help="user i starts after i*STAGGER s of silence, as people who do not all stop talking at the same "
        "instant (default 3); 0 runs every user's turns in lockstep, the worst case",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="talk the conversation through this many times, on new sessions each round, and pool the "
        "turns (a p95 over one round's 8-12 turns per user rests on one or two turns)",
    )
    parser.add_argument("--url", help="benchmark this running server instead of starting one (no CPU/RSS figures)")
    parser.add_argument("--no-ladder", action="store_true", help="skip the pause-ladder false-endpoint run")
    parser.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench.json")
    args = parser.parse_args(argv)
    llms = args.llm.split(",")
    args.transports = args.transport.split(",")
    if not set(args.transports) <= {"websocket", "webrtc"}:
        parser.error("--transport must be a list of websocket and webrtc")
    try:
        args.user_counts = [int(n) for n in args.users.split(",")]
    except ValueError:
        parser.error("--users must be a count or a comma-separated list of counts, e.g. 1,4")
    valid = min(args.user_counts) >= 1 and args.rounds >= 1 and args.duration > 0
    if not valid or not set(llms) <= {"embedded", "external"}:
        parser.error("--users and --rounds must be >= 1, --duration > 0, and --llm a list of embedded and external")
    args.llms = ["as configured"] if args.url else llms
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    conversation = load_conversation(args.eval_dir, args.conversation).excerpt(args.start, args.duration)
    ladder = load_conversation(args.eval_dir, LADDER).excerpt(0.0, args.duration)
    logs = args.out.parent / "bench_logs"
    runs, ladders = [], []
    for llm in args.llms:
        for transport in args.transports:
            for users in args.user_counts:
                plan = Plan(
                    users,
                    llm,
                    conversation,
                    polite=True,
                    url=args.url,
                    log_dir=logs / f"{llm}-{transport}-x{users}",
                    transport=transport,
                    llm_server=args.llm_server,
                    stagger_s=args.stagger,
                    rounds=args.rounds,
                    llm_threads=args.llm_threads,
                    llm_nice=args.llm_nice,
                )
                runs.append(run_plan(plan))
        if not args.no_ladder:
            where = logs / f"{llm}-ladder"
            plan = Plan(
                1,
                llm,
                ladder,
                polite=False,
                url=args.url,
                log_dir=where,
                llm_server=args.llm_server,
                llm_threads=args.llm_threads,
                llm_nice=args.llm_nice,
            )
            ladders.append(run_plan(plan))
    return {"runs": runs, "pause_ladder": ladders}


def report(result: dict[str, Any]) -> str:
    lines = []
    for run in result["runs"]:
        o = run["overall"]
        v2v = o["voice_to_voice_ms"]
        lines.append(
            f"{run['llm']:>9}{f' ({server})' if (server := run.get('llm_server')) else ''} "
            f"{run['transport']:>9} x{run['users']} (stagger {run['stagger_s']:g} s, {run['rounds']} rounds): "
            f"{o['turns']} turns, "
            f"voice-to-voice p50 {v2v['p50']} p95 {v2v['p95']} "
            f"max {v2v['max']} ms (server p50 {o['server_voice_to_voice_ms']['p50']}), "
            f"replies mid-speech {o['replies_mid_speech']}, eager ends {o['eager_endpoints']}, "
            f"overhead p50 {o['overhead_per_turn_ms']['p50']} ms, WER {o['wer']}, "
            f"utterances never seen to end {o['unended_utterances']}, {_contention(o['contention'])}, "
            f"underruns {o['reply_underruns']}, frame jitter {o['reply_frame_jitter_ms']}, "
            f"loop lag {run['resources']['loop_lag_ms']}, machine {run['resources']['machine']}, "
            f"CPU s: {_cpu(run['resources']['processes'])}"
        )
    lines += scaling(result["runs"])
    for run in result["pause_ladder"]:
        ep = run["per_user"][0]["endpoints"]
        if ep:
            lines.append(f"{run['llm']:>9} pause ladder: false endpoints {ep['false_endpoints']}/{ep['short_pauses']}")
    return "\n".join(lines)


def _cpu(processes: dict[str, Any]) -> str:
    return ", ".join(f"{name} {figures['cpu_s']}" for name, figures in processes.items())


def _contention(split: dict[str, Any]) -> str:
    """Voice-to-voice p95 of turns that waited alone and of turns that waited while another user did."""
    alone, overlapping = split["alone"], split["overlapping"]
    return (
        f"waited alone {alone['n']} turns (p95 {alone['p95']} ms), "
        f"beside another user's wait {overlapping['n']} (p95 {overlapping['p95']} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A SIGTERM ends the run like Ctrl-C: through the finally blocks that stop the servers it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = bench(args)
    except (InputError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot(result["runs"], args.out.with_suffix(".png"))
    print(report(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
