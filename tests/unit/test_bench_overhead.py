"""The overhead benchmark drives the real stages with instant models: every turn is answered."""

from __future__ import annotations

import logging

import pytest

from voxloop.bench.overhead import Script, measure
from voxloop.pipeline.config import Settings


async def test_every_scripted_turn_is_answered_and_costs_are_measured(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = await measure(Script(turns=3, speech_s=1.0, silence_s=0.8), Settings())
    assert not caplog.records  # no stage failed on the way (the final transcript would hide a failed guess)
    assert result["turns"] == 3  # three utterances: three endpoints, three replies
    assert result["frames"] == 3 * (50 + 40)
    assert result["graph_cpu_ms_per_frame"] > 0
    assert result["wire_cpu_ms_per_frame"]["inbound_ms"] > 0
    assert 0 < result["turn_latency_ms"]["p50"] <= result["turn_latency_ms"]["max"]
