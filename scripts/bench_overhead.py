"""The pipeline's own overhead, model compute taken out (see voxloop/bench/overhead.py).

    .venv/bin/python scripts/bench_overhead.py [--turns 20] [--out out/bench_overhead.json]

Prints CPU per 20 ms input frame (graph and wire codec) and, per turn, the CPU spent and the wall
time from the endpoint decision to the first reply audio leaving the graph. Targets: under
0.2 ms per frame, under 20 ms per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from voxloop.bench.overhead import Script, measure
from voxloop.pipeline.config import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("out/bench_overhead.json"))
    args = parser.parse_args()
    result = asyncio.run(measure(Script(turns=args.turns), load_settings()))
    wire = result["wire_cpu_ms_per_frame"]
    print(f"frames {result['frames']}, turns {result['turns']}")
    print(f"graph CPU per 20 ms frame       {result['graph_cpu_ms_per_frame']:.4f} ms")
    print(f"wire CPU per frame (in / out)    {wire['inbound_ms']:.4f} / {wire['outbound_ms']:.4f} ms")
    print(f"CPU per turn (beyond its frames) {result['turn_cpu_ms']:.2f} ms")
    latency = result["turn_latency_ms"]
    print(f"endpoint → first audio out       p50 {latency['p50']} ms, max {latency['max']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
