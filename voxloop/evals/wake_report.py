"""The wake-word evaluation as text (a table per word) and as JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from voxloop.evals.wake import WakeEvaluation
from voxloop.evals.wake_metrics import Row, fa_sources, phrase_of

HEADER = f"{'threshold':>9}  {'recall':>13}  {'partial':>9}  {'latency p50':>11}  {'p95':>5}  {'FA':>3}  {'FA/h':>6}"


def format_tables(
    evaluation: WakeEvaluation, config: Mapping[str, float], recommended: Mapping[str, Row | None], max_fa_h: float
) -> str:
    """A table per word; `config` marks each word's configured threshold, `recommended` the suggestion."""
    blocks = [_summary(evaluation)]
    for word in evaluation.words:
        blocks.append(_table(word, evaluation.rows[word], config.get(word), recommended.get(word), max_fa_h))
    return "\n\n".join(blocks)


def _summary(evaluation: WakeEvaluation) -> str:
    return (
        f"{evaluation.clips} clips x {evaluation.phases} chunk phase(s): {evaluation.audio_s / 60:.1f} min of audio "
        f"scored in {evaluation.score_s:.0f} s. Latency: from the end of the voice to the end of the 80 ms "
        f"chunk that fired (< 0: before the word ended; compute time not included)."
    )


def _table(word: str, rows: list[Row], config: float | None, best: Row | None, max_fa_h: float) -> str:
    first = rows[0]
    lines = [
        f'{word} ("{phrase_of(word)}"): {first.targets} target streams, {first.partial_targets} partial-phrase '
        f"streams, {first.non_wake_s / 60:.1f} min of non-wake audio",
        HEADER,
    ]
    for row in rows:
        marks = [m for m, on in (("◀ config", row.threshold == config), ("★ recommended", row is best)) if on]
        lines.append(f"{_line(row)}  {'  '.join(marks)}".rstrip())
    sources = fa_sources(rows)
    if sources:
        lines.append("false accepts from: " + ", ".join(f"{c} (up to {t:g})" for c, t in sources.items()))
    if best is None:
        lines.append(f"no threshold keeps false accepts within {max_fa_h:g}/h: none recommended")
    else:
        lines.append(f"recommended {best.threshold:g}: the middle of the best recall with FA/h <= {max_fa_h:g}")
    return "\n".join(lines)


def _line(row: Row) -> str:
    recall = "-" if row.recall is None else f"{row.detected}/{row.targets} {row.recall:4.0%}"
    partial = f"{row.partial_detected}/{row.partial_targets}" if row.partial_targets else "-"
    fa_h = "-" if row.fa_per_hour is None else f"{row.fa_per_hour:.1f}"
    return (
        f"{row.threshold:>9.2f}  {recall:>13}  {partial:>9}  {_ms(row.latency_p50_ms):>11}  "
        f"{_ms(row.latency_p95_ms):>5}  {row.false_accepts:>3}  {fa_h:>6}"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f}"


def to_json(
    evaluation: WakeEvaluation, config: Mapping[str, float], recommended: Mapping[str, Row | None], max_fa_h: float
) -> dict[str, Any]:
    return {
        "clips": evaluation.clips,
        "phases": evaluation.phases,
        "audio_s": round(evaluation.audio_s, 1),
        "score_s": round(evaluation.score_s, 1),
        "max_fa_per_hour": max_fa_h,
        "words": {
            word: {
                "config_threshold": config.get(word),
                "recommended_threshold": _threshold(recommended.get(word)),
                "rows": [_row_json(row) for row in evaluation.rows[word]],
            }
            for word in evaluation.words
        },
    }


def _threshold(row: Row | None) -> float | None:
    return None if row is None else row.threshold


def _row_json(row: Row) -> dict[str, Any]:
    return {**dataclasses.asdict(row), "recall": row.recall, "fa_per_hour": row.fa_per_hour}
