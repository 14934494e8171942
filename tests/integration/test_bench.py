"""A short smoke run of the benchmark: one user, one short excerpt, a real server and real models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voxloop.bench.conversation import load_conversation
from voxloop.bench.run import Plan, run_plan

pytestmark = pytest.mark.integration


def test_one_user_excerpt_gives_sane_figures(eval_dir: Path, server: Any, tmp_path: Path) -> None:
    # "one two three" after 1.5 s of silence, streamed at real-time pace to the shared server,
    # twice: each round on a new session, the turns of both pooled.
    excerpt = load_conversation(eval_dir, "dev_conv01_turns").excerpt(37.0, 3.0)
    result = run_plan(Plan(1, "embedded", excerpt, True, server.url, tmp_path, rounds=2))

    overall = result["overall"]
    assert overall["turns"] == 2, result["per_user"]
    assert len(result["per_user"]) == 2 and result["rounds"] == 2
    assert overall["errors"] == 0
    v2v = overall["voice_to_voice_ms"]
    assert 100 < v2v["p50"] <= v2v["max"] < 15000  # the reply came after the speech ended, within bounds
    stages = overall["stages_ms"]
    assert {"endpoint_delay", "stt", "llm_first_token", "tts_first_audio"} <= stages.keys()
    assert stages["endpoint_delay"]["p50"] >= 0
    assert overall["wer"] is not None and overall["wer"] <= 1.0
    assert overall["reply_audio_s"] > 0.2
    assert overall["frames_sent"] >= 2 * 3.0 / 0.02  # every 20 ms of the excerpt (plus the wait) went out
    timed = sum(1 for user in result["per_user"] for turn in user["turns"] if turn["client_v2v_ms"] is not None)
    replies = [turn for user in result["per_user"] for turn in user["turns"]]
    assert all(turn["reply_text"] for turn in replies)  # what each reply said, to read a slow turn by
    assert all("speech_end" in turn["marks_ms"] for turn in replies)  # and its timeline
    split = overall["contention"]  # one user at a time: every timed turn waited alone
    assert split["alone"]["n"] == timed > 0 and split["overlapping"]["n"] == 0
    assert result["resources"]["loop_lag_ms"]["max"] >= 0
    assert result["resources"]["processes"]["bench (simulated users)"]["cpu_s"] > 0  # what the load itself took
    machine = result["resources"]["machine"]
    assert 0 < machine["busy_percent"] <= 100 and 0 <= machine["steal_percent"] < 100


def test_pause_ladder_scoring_counts_short_pauses(eval_dir: Path) -> None:
    from voxloop.bench.conversation import score_endpoints

    ladder = load_conversation(eval_dir, "dev_conv02_pause_ladder")
    speech = [(s.start_s, s.voiced_end_s, s.end_s) for s in ladder.segments if s.spoken]
    # An endpoint in the 0.2 s pause after the first sentence is false; one after the last speech is not.
    scored = score_endpoints(speech, [10.6, speech[-1][1] + 0.2])
    assert scored["false_endpoints"] == 1
    assert scored["short_pauses"] == sum(1 for row in scored["ladder"] if row["pause_s"] < 1.0) > 3
