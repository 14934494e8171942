"""The LLM retry policy and its driver on a virtual clock: scripted attempts cost virtual time,
pauses advance it, so every timing below is exact and the tests take no real time (except the
one that proves a stalled attempt is cut at the deadline on the real clock)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from voxloop.pipeline.errors import TransientError
from voxloop.pipeline.trace import TurnTrace
from voxloop.stages.llm.retry import (
    LlmFailure,
    Retry,
    RetryPolicy,
    parse_retry_after,
    status_failure,
    stream_with_retries,
)
from voxloop.tracing.prometheus import PrometheusSink


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Attempt:
    """One scripted attempt: it takes `cost_s` of virtual time, yields `deltas`, then raises `error`."""

    deltas: list[str] = field(default_factory=list)
    error: BaseException | None = None
    cost_s: float = 0.0


class Backend:
    """Plays scripted attempts in order (the last one again once the script runs out)."""

    def __init__(self, clock: VirtualClock, *script: Attempt) -> None:
        self.clock, self.script = clock, list(script)
        self.started_at: list[float] = []
        self.closed = 0

    def start(self) -> AsyncIterator[str]:
        self.started_at.append(self.clock.now)
        return self._play(self.script.pop(0) if len(self.script) > 1 else self.script[0])

    async def _play(self, attempt: Attempt) -> AsyncIterator[str]:
        try:
            self.clock.now += attempt.cost_s
            for delta in attempt.deltas:
                yield delta
            if attempt.error is not None:
                raise attempt.error
        finally:
            self.closed += 1


def server_error() -> LlmFailure:
    return status_failure(503, "LLM server at http://llm/v1 answered 503: loading")


async def run(
    backend: Backend, policy: RetryPolicy, *, rand: Callable[[], float] = lambda: 1.0
) -> tuple[list[str], list[Retry]]:
    got: list[str] = []
    retries: list[Retry] = []
    deltas = stream_with_retries(
        backend.start, policy, on_retry=retries.append, clock=backend.clock, sleep=backend.clock.sleep, rand=rand
    )
    try:
        async for delta in deltas:
            got.append(delta)
    finally:
        await deltas.aclose()
    return got, retries


async def drain(deltas: AsyncIterator[str], into: list[str]) -> None:
    """Append each delta to `into`, so a test can see what came before an exception."""
    async for delta in deltas:
        into.append(delta)


# --- the policy -------------------------------------------------------------------------------


def test_backoff_doubles_from_the_initial_pause_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_initial_s=0.25, backoff_max_s=2.0)
    assert [policy.backoff_s(retry, rand=1.0) for retry in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_jitter_takes_off_at_most_half_and_spreads_the_pauses() -> None:
    policy = RetryPolicy(backoff_initial_s=0.4, backoff_max_s=10.0)
    assert policy.backoff_s(2, rand=0.0) == pytest.approx(0.4)  # half of 0.8
    draws = random.Random(7)
    pauses = [policy.backoff_s(2, rand=draws.random()) for _ in range(200)]
    assert all(0.4 <= pause <= 0.8 for pause in pauses)
    assert max(pauses) - min(pauses) > 0.3  # sessions failed together do not come back together


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_server_errors_timeouts_and_rate_limits_are_retryable(status: int) -> None:
    failure = status_failure(status, "x", retry_after_s=1.0)
    assert failure.retryable and failure.retry_after_s == 1.0
    assert failure.reason == ("http_5xx" if status >= 500 else f"http_{status}")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_not(status: int) -> None:
    failure = status_failure(status, "x", retry_after_s=1.0)
    assert (failure.retryable, failure.reason) == (False, "http_4xx")


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now) == 0.0
    for unusable in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(unusable) is None


# --- the driver -------------------------------------------------------------------------------


async def test_a_failure_before_the_first_token_is_retried_with_growing_pauses() -> None:
    clock = VirtualClock()
    failing = Attempt(error=server_error(), cost_s=0.1)
    backend = Backend(clock, failing, failing, Attempt(["Hello", " there."], cost_s=0.2))
    policy = RetryPolicy(deadline_s=6.0, backoff_initial_s=0.25)
    got, retries = await run(backend, policy)
    assert got == ["Hello", " there."]
    assert clock.sleeps == [0.25, 0.5]
    assert [(r.attempt, r.reason, r.delay_s) for r in retries] == [(1, "http_5xx", 0.25), (2, "http_5xx", 0.5)]
    assert backend.started_at == pytest.approx([0.0, 0.35, 0.95])
    assert backend.closed == 3  # every failed attempt was closed before the pause


async def test_all_attempts_and_pauses_stay_within_the_turn_deadline() -> None:
    clock = VirtualClock()
    backend = Backend(clock, Attempt(error=server_error(), cost_s=0.4))
    policy = RetryPolicy(deadline_s=3.0, max_attempts=100, backoff_initial_s=0.25, backoff_max_s=1.0)
    with pytest.raises(LlmFailure) as caught:
        await run(backend, policy)
    # attempts at 0, 0.65 (after 0.25), 1.55 (after 0.5); failed at 1.95, a pause of 1.0 would leave
    # the next attempt 0.05 s: it gives up at once rather than make the user wait for nothing
    assert backend.started_at == pytest.approx([0.0, 0.65, 1.55])
    assert clock.now == pytest.approx(1.95) and clock.sleeps == [0.25, 0.5]
    message = str(caught.value)
    assert message.startswith("LLM server at http://llm/v1 answered 503: loading (gave up after 3 attempts in 2.0 s; ")
    assert "llm.turn_deadline_s = 3" in message and caught.value.reason == "http_5xx"


async def test_at_most_max_attempts_are_made() -> None:
    clock = VirtualClock()
    backend = Backend(clock, Attempt(error=server_error()))
    with pytest.raises(LlmFailure, match="gave up after 3 attempts"):
        await run(backend, RetryPolicy(deadline_s=60.0, max_attempts=3))
    assert len(backend.started_at) == 3


async def test_retry_after_is_honoured_when_it_is_longer_than_the_backoff() -> None:
    clock = VirtualClock()
    limited = status_failure(429, "rate limited", retry_after_s=1.5)
    backend = Backend(clock, Attempt(error=limited), Attempt(["ok"]))
    got, retries = await run(backend, RetryPolicy(deadline_s=6.0, backoff_initial_s=0.25))
    assert got == ["ok"] and clock.sleeps == [1.5] and retries[0].reason == "http_429"


async def test_a_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    clock = VirtualClock()
    limited = status_failure(429, "rate limited", retry_after_s=30.0)
    backend = Backend(clock, Attempt(error=limited), Attempt(["ok"]))
    with pytest.raises(LlmFailure) as caught:
        await run(backend, RetryPolicy(deadline_s=6.0))
    assert caught.value is limited  # a single attempt: the server's own error, unchanged
    assert clock.sleeps == [] and len(backend.started_at) == 1


@pytest.mark.parametrize("status", [401, 404])
async def test_a_bad_key_or_model_is_not_retried(status: int) -> None:
    clock = VirtualClock()
    refused = status_failure(status, f"answered {status}")
    backend = Backend(clock, Attempt(error=refused), Attempt(["ok"]))
    with pytest.raises(LlmFailure) as caught:
        await run(backend, RetryPolicy())
    assert caught.value is refused and len(backend.started_at) == 1 and clock.sleeps == []


async def test_a_failure_after_content_is_not_retried() -> None:
    clock = VirtualClock()
    cut = LlmFailure("dropped", reason="dropped", retryable=True)
    backend = Backend(clock, Attempt(["The answer", " is"], error=cut), Attempt(["The answer is 42."]))
    got: list[str] = []
    with pytest.raises(LlmFailure) as caught:
        await drain(stream_with_retries(backend.start, RetryPolicy(), clock=clock, sleep=clock.sleep), got)
    assert caught.value is cut
    assert got == ["The answer", " is"]  # not followed by a second try that would repeat them
    assert len(backend.started_at) == 1


async def test_empty_deltas_are_not_content() -> None:
    clock = VirtualClock()
    malformed = LlmFailure("malformed", reason="malformed", retryable=True)
    backend = Backend(clock, Attempt(["", ""], error=malformed), Attempt(["", "ok"]))
    got, retries = await run(backend, RetryPolicy())
    assert got == ["ok"] and [r.reason for r in retries] == ["malformed"]


async def test_an_unclassified_transient_error_is_not_retried() -> None:
    clock = VirtualClock()
    backend = Backend(clock, Attempt(error=TransientError("prompt too long")), Attempt(["ok"]))
    with pytest.raises(TransientError, match="prompt too long"):
        await run(backend, RetryPolicy())
    assert len(backend.started_at) == 1


async def test_a_stalled_attempt_is_cut_at_the_time_left_on_the_real_clock() -> None:
    closed = asyncio.Event()

    async def stall() -> AsyncIterator[str]:
        try:
            await asyncio.sleep(3600)
            yield "never"
        finally:
            closed.set()

    started = time.monotonic()
    with pytest.raises(LlmFailure, match=r"no first token within llm.turn_deadline_s = 0.3 s") as caught:
        await drain(stream_with_retries(stall, RetryPolicy(deadline_s=0.3)), [])
    assert 0.25 <= time.monotonic() - started < 3.0
    assert caught.value.reason == "deadline" and closed.is_set()


async def test_cancelling_the_consumer_during_a_pause_cancels_cleanly() -> None:
    attempts = 0

    def failing() -> AsyncIterator[str]:
        nonlocal attempts
        attempts += 1

        async def fail() -> AsyncIterator[str]:
            raise server_error()
            yield ""

        return fail()

    task = asyncio.create_task(
        drain(stream_with_retries(failing, RetryPolicy(deadline_s=60, backoff_initial_s=30.0)), [])
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1


def test_retries_noted_in_a_trace_are_counted_by_reason() -> None:
    sink = PrometheusSink()
    trace = TurnTrace("s1", 1, marks={"speech_end": 0}, notes={"llm_retries": ["http_5xx", "http_5xx", "dropped"]})
    sink.turn(trace, session=None)  # type: ignore[arg-type]  # the sink reads nothing else of it
    text = sink.exposition().decode()
    assert 'voxloop_llm_retries_total{reason="http_5xx"} 2.0' in text
    assert 'voxloop_llm_retries_total{reason="dropped"} 1.0' in text
