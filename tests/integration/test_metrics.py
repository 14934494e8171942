"""Traces leave a real server: one spoken turn shows up on /metrics and as one JSONL line without its words."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.servers import ServerProcess, running_server
from voxloop.client import RealtimeClient, silence
from voxloop.pipeline.audio import decode_audio

pytestmark = pytest.mark.integration

TURN_S = 40.0  # bound on one spoken turn's reply on a busy 2-core machine (typically 2-4 s)
FORWARD = "psphinx_goforward"  # "go forward ten meters" (2.8 s)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    where = tmp_path_factory.mktemp("traced")
    jsonl = where / "traces.jsonl"
    with running_server(where / "server.log", {"VOXLOOP_TRACE__JSONL": str(jsonl)}) as process:
        yield process, jsonl


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def lines_of(path: Path, within: float = 10.0) -> list[str]:
    """The file's lines once it has some (the server writes them from a thread)."""
    deadline = time.monotonic() + within
    while not (lines := read_lines(path)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return lines


async def test_one_spoken_turn_is_counted_and_written(
    traced: tuple[ServerProcess, Path], eval_dir: Path, manifest: list[dict[str, str]]
) -> None:
    server, jsonl = traced
    row = next(row for row in manifest if row["id"] == FORWARD)
    pcm = decode_audio(eval_dir / row["file"], rate=24000)
    http = httpx.AsyncClient(base_url=server.url, timeout=5)
    before = await http.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    assert metric(before.text, "voxloop_turns_total") == 0

    async with await RealtimeClient.connect(server.ws_url) as client:
        await client.wait_for("session.created", within=10)
        await client.stream(np.concatenate([silence(0.3), pcm, silence(1.5)]), rate=24000)
        _, trace_event = await client.wait_turn(within=TURN_S)
        during = (await http.get("/metrics")).text
        assert metric(during, "voxloop_sessions") == 1
    trace = trace_event["trace"]

    after = (await http.get("/metrics")).text
    assert metric(after, "voxloop_turns_total") == 1
    assert metric(after, "voxloop_voice_to_voice_seconds_count") == 1
    assert metric(after, "voxloop_voice_to_voice_seconds_sum") == pytest.approx(trace["voice_to_voice_ms"] / 1000)
    assert metric(after, 'voxloop_stage_seconds_count{stage="stt"}') == 1
    assert metric(after, "voxloop_sessions_opened_total") == 1

    lines = await lines_of(jsonl)
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["turn_id"] == trace["turn_id"] and record["session_id"] == trace["session_id"]
    assert record["voice_to_voice_ms"] == pytest.approx(trace["voice_to_voice_ms"])
    assert set(record["spans_ms"]) >= {"endpoint_delay", "stt", "llm_first_token", "tts_first_audio", "send"}
    assert "text" not in record and "forward" not in lines[0].lower()
    deadline = time.monotonic() + 10
    while metric((await http.get("/metrics")).text, "voxloop_sessions") != 0:
        assert time.monotonic() < deadline, "the closed session still counts as open"
        await asyncio.sleep(0.1)
    await http.aclose()
