"""The soak run, short: 2 users for 30 s plus 20 connect/disconnect cycles on a server of its own,
with the same checks as scripts/soak (no leak once every client is gone, RSS in band, no unexpected errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxloop.bench.conversation import load_conversation
from voxloop.bench.soak import SoakPlan, report, run_soak

pytestmark = pytest.mark.integration


def test_a_short_soak_leaks_nothing_and_keeps_answering(eval_dir: Path, tmp_path: Path) -> None:
    # Two turns per pass: "one two three" and the question after it, with their natural pauses.
    excerpt = load_conversation(eval_dir, "dev_conv01_turns").excerpt(37.0, 12.0)
    plan = SoakPlan(2, 30.0, 20, excerpt, None, tmp_path, rss_band_mib=400.0, window_s=10.0)
    result = run_soak(plan)
    print(report(result))

    checks = result["checks"]
    assert checks["no_leak"]["ok"], checks["no_leak"]
    assert checks["no_unexpected_errors"]["ok"], checks["no_unexpected_errors"]
    assert checks["rss_in_band"]["ok"], (checks["rss_in_band"], result["rss_mib"])
    assert result["ok"]
    assert result["cycles"] == 20
    assert result["passes"] >= 2 and result["turns"] >= result["passes"]  # every pass was answered
    assert result["voice_to_voice_ms"]["n"] >= 2 and result["voice_to_voice_ms"]["max"] < 15000
    assert len(result["samples"]) >= 10  # sampled all along (every 2 s)
    assert max(s["sessions"] for s in result["samples"]) >= 2  # the users were there at once
