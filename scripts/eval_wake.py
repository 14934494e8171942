"""The wake-word evaluation: recall, false accepts per hour and detection latency per word and threshold.

    scripts/eval_wake [--words hey_jarvis,alexa,hey_mycroft] [--thresholds 0.1:0.9:0.1] [--phases 4]
                      [--max-fa-per-hour 0] [--eval-dir ../shared/eval] [--json out/eval_wake.json]

Every clip of the eval set is scored once (per 20 ms chunk phase) by the wake stage's own detector;
each threshold then replays the recorded scores. Recall counts the clips of a word that fired it;
clips saying part of the phrase ("jarvis" for hey_jarvis) are shown apart and never count as false
accepts; every other clip (music, noise, silence, speech, other wake words) does. Prints a table per
word and marks the configured threshold and a recommended one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voxloop.evals.eval_set import load_clips
from voxloop.evals.wake import MAX_PHASES, evaluate
from voxloop.evals.wake_metrics import recommend
from voxloop.evals.wake_report import format_tables, to_json
from voxloop.pipeline.assets import MANIFEST, AssetStore
from voxloop.pipeline.config import WakeSettings, WakeWord, load_settings
from voxloop.pipeline.errors import VoxloopError
from voxloop.stages.wake import load_wake_models

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORDS = ",".join(name.removeprefix("wake-") for name in MANIFEST if name.startswith("wake-"))
DEFAULT_THRESHOLD = WakeWord.model_fields["threshold"].default


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/eval_wake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", default=DEFAULT_WORDS, help=f"wake word models or .onnx paths ({DEFAULT_WORDS})")
    parser.add_argument("--thresholds", default="0.1:0.9:0.1", help="a list (0.3,0.5) or a range START:STOP:STEP")
    parser.add_argument("--phases", type=int, default=4, help=f"chunk phases per clip, 1-{MAX_PHASES} (default 4)")
    parser.add_argument("--max-fa-per-hour", type=float, default=0.0, help="bound for the recommendation (0)")
    parser.add_argument("--clips", help="only these clip ids (comma-separated), e.g. for a quick look")
    parser.add_argument("--eval-dir", type=Path, default=ROOT.parent / "shared" / "eval")
    parser.add_argument("--config", type=Path, help="config.yaml whose thresholds to mark (default: the repo's)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.thresholds = thresholds(args.thresholds)
    except ValueError as exc:
        parser.error(f"--thresholds: {exc}")
    if not 1 <= args.phases <= MAX_PHASES or args.max_fa_per_hour < 0:
        parser.error(f"--phases must be 1 to {MAX_PHASES} and --max-fa-per-hour >= 0")
    args.words = [w.strip() for w in args.words.split(",") if w.strip()]
    args.clips = None if args.clips is None else [c.strip() for c in args.clips.split(",") if c.strip()]
    return args


def thresholds(text: str) -> list[float]:
    """ "0.3,0.5" or "0.1:0.9:0.1" (both ends included) -> sorted thresholds, each in (0, 1)."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("a range needs STOP >= START and a STEP > 0")
            values = [round(start + i * step, 4) for i in range(int((stop - start) / step + 1e-9) + 1)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a list like 0.3,0.5 or a range like 0.1:0.9:0.1 ({exc})") from None
    if not values or not all(0 < v < 1 for v in values):
        raise ValueError(f"{text!r}: give thresholds between 0 and 1 (exclusive)")
    return sorted(set(values))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        settings = load_settings(args.config)
        configured = {w.name: w.threshold for w in settings.wake.words}
        words = [WakeWord(name=name, threshold=configured.get(name, DEFAULT_THRESHOLD)) for name in args.words]
        clips = load_clips(args.eval_dir, args.clips)
        models = load_wake_models(WakeSettings(words=words), AssetStore(settings.assets.cache_dir))
        try:
            config = {w.name: w.threshold for w in models.words}
            sweep = sorted({*args.thresholds, *config.values()})
            evaluation = evaluate(models, clips, sweep, phases=args.phases, progress=_progress)
        finally:
            models.close()
    except VoxloopError as exc:
        print(f"eval_wake: {exc}", file=sys.stderr)
        return 1
    best = {word: recommend(evaluation.rows[word], args.max_fa_per_hour) for word in evaluation.words}
    print(format_tables(evaluation, config, best, args.max_fa_per_hour))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(evaluation, config, best, args.max_fa_per_hour), indent=2))
        print(f"wrote {args.json}")
    return 0


def _progress(done: int, total: int) -> None:
    if done == total or done % 10 == 0:
        print(f"scored {done}/{total} clips", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
