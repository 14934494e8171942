"""Per-turn figures from what a simulated user received: which turns a latency is measured for."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest

from voxloop.bench.stats import contention, ratio_interval, scaling, turns, unended
from voxloop.bench.user import UserRun
from voxloop.client import RealtimeClient, Received

AUDIO = base64.b64encode(bytes(640)).decode()  # 20 ms at 16 kHz


@dataclass
class Inbox:
    received: list[Received] = field(default_factory=list)

    def add(self, at: float, event: dict[str, Any]) -> None:
        self.received.append(Received(event, at, len(self.received)))


def reply(inbox: Inbox, rid: str, created: float, trace: dict[str, Any]) -> None:
    response = {"id": rid, "status": "completed"}
    inbox.add(created, {"type": "response.created", "response": response})
    inbox.add(created + 0.1, {"type": "response.output_audio.delta", "response_id": rid, "delta": AUDIO})
    said = [{"type": "message", "content": [{"type": "output_audio", "transcript": f"Reply {rid}."}]}]
    inbox.add(created + 0.2, {"type": "response.done", "response": {**response, "output": said}})
    inbox.add(created + 0.2, {"type": "voxloop.trace", "trace": trace})


def test_server_latency_is_counted_only_for_a_turn_the_server_ended_after_the_speech() -> None:
    inbox = Inbox()
    ended = {"voice_to_voice_ms": 640.0, "spans_ms": {"endpoint_delay": 500.0}}
    reply(inbox, "after", 2.5, ended)  # the user spoke 0-2 s: a reply after the end of their speech
    reply(inbox, "inside", 3.5, {"voice_to_voice_ms": -2400.0, "spans_ms": {"endpoint_delay": 300.0}})
    reply(inbox, "unended", 7.0, {"voice_to_voice_ms": 0.0, "spans_ms": {"send": 1.0}})
    run = UserRun(cast(RealtimeClient, inbox), sent_at=[i * 0.02 for i in range(500)])
    run.speech = [(0.0, 2.0, 2.2), (3.0, 5.0, 5.2)]  # (start, voiced end, end) in the streamed audio
    figures = {t["response_id"]: t for t in turns(run)}
    assert figures["after"]["server_v2v_ms"] == 640.0 and not figures["after"]["mid_speech"]
    assert figures["after"]["waiting_s"] == pytest.approx((2.0, 2.6))  # true end of speech -> first reply audio
    assert figures["after"]["reply_text"] == "Reply after."  # what the reply said, to read a slow turn by
    assert figures["inside"]["mid_speech"] and figures["inside"]["server_v2v_ms"] is None  # answered a pause
    assert figures["inside"]["client_v2v_ms"] is None and figures["inside"]["waiting_s"] is None
    assert figures["unended"]["server_v2v_ms"] is None  # no end of turn in its trace


def test_scaling_gives_each_user_count_p95_as_a_multiple_of_the_first() -> None:
    def run(llm: str, users: int, client: float | None, server: float) -> dict[str, Any]:
        overall = {"voice_to_voice_ms": {"p95": client}, "server_voice_to_voice_ms": {"p95": server}}
        return {"llm": llm, "transport": "websocket", "users": users, "overall": overall}

    runs = [
        run("external", 1, 800.0, 900.0),
        run("external", 4, 1200.0, 1800.0),
        run("embedded", 1, 700.0, 700.0),  # another LLM: its own base
        run("embedded", 4, None, 1400.0),  # no client figure: said, not divided by
    ]
    lines = scaling(runs)
    assert len(lines) == 2
    assert "x4 against x1" in lines[0] and "1.50x (client), 2.00x (server)" in lines[0]
    assert lines[1].strip().startswith("embedded") and "n/a (client), 2.00x (server)" in lines[1]


def test_the_ratio_comes_with_a_bootstrap_interval_as_wide_as_its_turns_leave_it() -> None:
    steady = ratio_interval([1200.0] * 40, [800.0] * 40)
    assert steady == pytest.approx((1.5, 1.5))  # no spread in the turns: no doubt about the ratio
    rng = np.random.default_rng(1)
    one_user = [*rng.normal(700, 60, 35), 1100.0, 1400.0]  # a p95 resting on two slow turns
    four_users = list(rng.normal(1000, 150, 150))
    low, high = ratio_interval(four_users, one_user) or (0.0, 0.0)
    point = np.percentile(four_users, 95) / np.percentile(one_user, 95)
    assert low < point < high and high - low > 0.2
    assert ratio_interval([900.0], one_user) is None  # one turn says nothing about a p95

    def run(users: int, values: list[float]) -> dict[str, Any]:
        per_user = [{"turns": [{"client_v2v_ms": v, "server_v2v_ms": None} for v in values]}]
        overall = {
            "voice_to_voice_ms": {"p95": float(np.percentile(values, 95))},
            "server_voice_to_voice_ms": {"p95": None},
        }
        return {"llm": "external", "transport": "websocket", "users": users, "overall": overall, "per_user": per_user}

    [line] = scaling([run(1, one_user), run(4, four_users)])
    assert f"(90% interval {low:.2f}-{high:.2f}x) (client), n/a (server)" in line


def test_contention_tells_turns_that_waited_beside_another_users_from_turns_that_waited_alone() -> None:
    def user(*waits: tuple[float, float]) -> dict[str, Any]:
        timed = [{"client_v2v_ms": (end - start) * 1000, "waiting_s": (start, end)} for start, end in waits]
        return {"turns": [*timed, {"client_v2v_ms": None, "waiting_s": None}]}  # an untimed turn counts nowhere

    users = [
        user((0.0, 0.5), (10.0, 11.2)),  # its second wait shares 0.7 s with the second user's
        user((10.5, 11.5), (20.0, 20.6)),
        user((11.48, 12.0)),  # shares 20 ms with the second user's: a wait ending as another begins
        user((0.0, 0.6)),  # shares 0.5 s with the first user's first wait
    ]
    split = contention(users)
    assert split["overlapping"]["n"] == 4 and split["overlapping"]["max"] == 1200.0
    assert split["alone"]["n"] == 2 and split["alone"]["max"] == 600.0  # (20.0, 20.6) and (11.48, 12.0)


def test_an_utterance_the_client_saw_start_but_never_stop_is_counted() -> None:
    started, stopped = {"type": "input_audio_buffer.speech_started"}, {"type": "input_audio_buffer.speech_stopped"}
    done = {"type": "conversation.item.input_audio_transcription.completed"}
    assert unended([started, stopped, done, started, stopped]) == 0
    assert unended([started, started, stopped, started, done, started]) == 2  # the last one may still be going on
