"""Benchmark offline turns on real speech: per-stage latency, voice-to-voice, model speeds, RSS.

    .venv/bin/python scripts/bench_turn.py [--limit 20] [--out out/bench_turn.json]

Each gold utterance of ../shared/eval is streamed through the whole graph at real-time pace
(20 ms frames, then silence), exactly as `voxloop converse` does, with the models loaded once.
Prints medians and p95 per step and writes a JSON result. Figures, not pass/fail: timings on
a shared 2-core machine are noisy, so compare ratios within one run and quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.commands.converse import converse
from voxloop.engine import Engines
from voxloop.pipeline.audio import read_wav
from voxloop.pipeline.config import load_settings
from voxloop.pipeline.trace import SPANS

REPO = Path(__file__).resolve().parents[1]
EVAL = Path(os.environ.get("VOXLOOP_EVAL_DIR", REPO.parent / "shared" / "eval"))
VOICE_PROMPTS = [
    "What is the tallest mountain in the world?",
    "Can you tell me a fun fact about octopuses?",
    "How do I make a cup of tea?",
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(values), "median": statistics.median(values), "p95": p95, "max": ordered[-1]}


def gold_utterances(limit: int) -> list[tuple[str, np.ndarray]]:
    with (EVAL / "manifest.tsv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["category"] == "utterance"]
    rows = [r for r in rows if r["transcript_quality"] == "gold"][:limit]
    return [(r["id"], read_wav(EVAL / r["file"])[0]) for r in rows]


async def bench_stt(engines: Engines, clips: list[tuple[str, np.ndarray]]) -> dict[str, float]:
    audio_s = compute_s = 0.0
    for _, pcm in clips:
        start = time.perf_counter()
        await engines.stt.atranscribe(pcm)
        compute_s += time.perf_counter() - start
        audio_s += len(pcm) / 16000
    return {"real_time_factor": compute_s / audio_s, "audio_s": audio_s}


async def bench_llm(engines: Engines, runs: int = 3) -> dict[str, Any]:
    settings = engines.settings.llm
    first_ms, tok_s = [], []
    for prompt in VOICE_PROMPTS * runs:
        messages = [
            {"role": "system", "content": settings.system_prompt},
            {"role": "user", "content": prompt},
        ]
        start = time.perf_counter()
        first = None
        pieces = 0
        async for _delta in engines.llm.stream(messages, max_tokens=60, temperature=0.0):
            pieces += 1
            first = first or time.perf_counter()
        end = time.perf_counter()
        if first is not None:
            first_ms.append((first - start) * 1000)
            if pieces > 1 and end > first:
                tok_s.append((pieces - 1) / (end - first))
    return {"first_token_ms": summary(first_ms), "deltas_per_s": summary(tok_s)}


async def bench_turns(engines: Engines, clips: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    spans: dict[str, list[float]] = {label: [] for label, _, _ in SPANS}
    v2v: list[float] = []
    lags: list[float] = []
    unanswered = []
    kinds: Counter[str] = Counter()  # how each turn ended, and whether its reply was speculative
    for clip_id, pcm in clips:
        result = await converse(pcm, engines.settings, realtime=True, engines=engines)
        lags.append(result.max_loop_lag_ms)
        if not result.turns:
            unanswered.append(clip_id)
        for turn in result.turns[:1]:
            for label, value in turn.trace.spans_ms().items():
                spans[label].append(value)
            if turn.trace.voice_to_voice_ms is not None:
                v2v.append(turn.trace.voice_to_voice_ms)
            notes = turn.trace.notes
            kinds[f"endpoint {notes.get('endpoint', '?')}, reply {notes.get('reply', 'after the endpoint')}"] += 1
        print(f"  {clip_id:<32} v2v {v2v[-1] if v2v else float('nan'):7.0f} ms", flush=True)
    return {
        "spans_ms": {label: summary(values) for label, values in spans.items() if values},
        "voice_to_voice_ms": summary(v2v),
        "max_loop_lag_ms": summary(lags),
        "unanswered": unanswered,
        "kinds": dict(kinds),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(args.config)
    rss_before = rss_mb()
    engines = await Engines.load(settings)
    result: dict[str, Any] = {
        "load_s": engines.load_s,
        "rss_mb_after_load": rss_mb(),
        "rss_mb_before": rss_before,
    }
    try:
        clips = gold_utterances(args.limit)
        print(f"STT real-time factor on {len(clips)} clips…", flush=True)
        result["stt"] = await bench_stt(engines, clips)
        print("embedded LLM first token and speed…", flush=True)
        result["llm"] = await bench_llm(engines)
        print("whole turns at real-time pace…", flush=True)
        result["turns"] = await bench_turns(engines, clips)
        result["rss_mb_end"] = rss_mb()
    finally:
        await engines.close()
    return result


def report(result: dict[str, Any]) -> None:
    print("\nper step (ms)          median      p95      max")
    for label, s in result["turns"]["spans_ms"].items():
        print(f"  {label:<18} {s['median']:9.0f} {s['p95']:8.0f} {s['max']:8.0f}")
    v2v = result["turns"]["voice_to_voice_ms"]
    if v2v:
        print(f"  {'voice-to-voice':<18} {v2v['median']:9.0f} {v2v['p95']:8.0f} {v2v['max']:8.0f}")
    for kind, count in result["turns"]["kinds"].items():
        print(f"  {count:3d} turns: {kind}")
    llm = result["llm"]
    print(f"STT real-time factor: {result['stt']['real_time_factor']:.3f}")
    print(
        f"LLM first token: median {llm['first_token_ms'].get('median', float('nan')):.0f} ms; "
        f"{llm['deltas_per_s'].get('median', float('nan')):.0f} tokens/s"
    )
    rss = result["rss_mb_after_load"], result["rss_mb_end"]
    print(f"RSS after loading all models: {rss[0]:.0f} MB (at the end: {rss[1]:.0f} MB)")
    print(f"model load times (s): {result['load_s']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=20, help="how many gold utterances (default 20)")
    parser.add_argument("--config", help="settings file (default: config.yaml)")
    parser.add_argument("--out", default="out/bench_turn.json")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    report(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
