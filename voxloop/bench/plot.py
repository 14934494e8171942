"""The benchmark's plot: voice-to-voice per run, and where the time went (median per stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STAGES = ("endpoint_delay", "stt", "llm_first_token", "first_chunk", "tts_first_audio", "send")


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    labels = [f"{r['llm']} {r.get('transport', 'websocket')}\n{r['users']} user(s)" for r in runs]
    series = [[t["client_v2v_ms"] for u in r["per_user"] for t in u["turns"] if t["client_v2v_ms"]] for r in runs]
    left.boxplot([s or [0.0] for s in series], tick_labels=labels)
    left.axhline(600, linestyle="--", linewidth=1, label="p50 target 600 ms")
    left.axhline(900, linestyle=":", linewidth=1, label="p95 target 900 ms")
    left.set_ylabel("voice-to-voice (ms, client side)")
    left.legend(loc="upper left")
    bottom = [0.0] * len(runs)
    for stage in STAGES:
        heights = [r["overall"]["stages_ms"].get(stage, {}).get("p50") or 0.0 for r in runs]
        right.bar(labels, heights, bottom=bottom, label=stage)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set_ylabel("median per stage (ms)")
    right.legend(loc="upper left", fontsize="small")
    fig.suptitle("voxloop benchmark")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
