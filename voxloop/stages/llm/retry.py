"""Retrying a reply that failed before its first word, within one deadline per turn.

    LlmFailure           a TransientError that says why (`reason`) and whether trying again may help
    status_failure       the LlmFailure an HTTP error status means (5xx, 408, 429 retryable; 401 not)
    parse_retry_after    a Retry-After header (seconds or an HTTP date) in seconds
    RetryPolicy          the pure rules: backoff with jitter, attempts, the turn's deadline
    stream_with_retries  the driver: opens attempts until one yields a token, the policy gives
                         up, or the deadline passes; clock, sleep and randomness are injectable

A voice user waits in silence while the reply is late, so every attempt of a turn shares one
deadline (llm.turn_deadline_s): each attempt's first token must come within the time left, and
a retry that could not start with some time to spare is not made; the stage then speaks its
apology at once. Once a token has been yielded nothing is retried: a second attempt would
repeat words the user has already heard.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import TransientError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

RETRYABLE_STATUSES = frozenset({408, 429})


class LlmFailure(TransientError):
    """A backend failure the retry policy can judge.

    `reason` is a short fixed label (a metric label, never reply text): unreachable, timeout,
    dropped, http_5xx, http_429, http_408, http_4xx, malformed, ended_early, error_event,
    not_stream, deadline.
    """

    def __init__(self, message: str, *, reason: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def status_failure(status: int, message: str, retry_after_s: float | None = None) -> LlmFailure:
    """Server errors, 408 and 429 may pass; any other 4xx (bad key, bad model, bad URL) will not."""
    if status >= 500:
        return LlmFailure(message, reason="http_5xx", retryable=True, retry_after_s=retry_after_s)
    if status in RETRYABLE_STATUSES:
        return LlmFailure(message, reason=f"http_{status}", retryable=True, retry_after_s=retry_after_s)
    return LlmFailure(message, reason="http_4xx", retryable=False)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After header's delay in seconds (>= 0), from delta-seconds or an HTTP date; None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite: not a delay
        return None
    return max(0.0, seconds)


def reason_of(error: BaseException) -> str:
    return error.reason if isinstance(error, LlmFailure) else "error"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    deadline_s: float = 6.0  # for the first token, every attempt and pause included
    max_attempts: int = 4
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 2.0
    min_attempt_s: float = 0.25  # a retry that would start with less time left than this is not made

    @classmethod
    def from_settings(cls, settings: LlmSettings) -> RetryPolicy:
        return cls(
            deadline_s=settings.turn_deadline_s,
            max_attempts=settings.retry_max_attempts,
            backoff_initial_s=settings.retry_backoff_initial_s,
            backoff_max_s=settings.retry_backoff_max_s,
        )

    def backoff_s(self, retry: int, rand: float) -> float:
        """The pause before retry number `retry` (1, 2, ...): doubling from backoff_initial_s up to
        backoff_max_s, then jittered down by up to half (rand in [0, 1)), so that the sessions one
        outage failed together do not all come back in the same instant."""
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** max(0, retry - 1))
        return base * (0.5 + 0.5 * min(max(rand, 0.0), 1.0))

    def delay_s(
        self, error: BaseException, *, attempts: int, elapsed_s: float, spoken: bool, rand: float
    ) -> float | None:
        """The pause before the next attempt, or None to give up now.

        Given up: after content was yielded, for a failure that is not retryable, after
        max_attempts, and when the pause (the backoff, or a longer Retry-After) would leave the
        next attempt less than min_attempt_s before the deadline.
        """
        if spoken or not isinstance(error, LlmFailure) or not error.retryable or attempts >= self.max_attempts:
            return None
        delay = self.backoff_s(attempts, rand)
        if error.retry_after_s is not None:
            delay = max(delay, error.retry_after_s)
        if elapsed_s + delay + self.min_attempt_s > self.deadline_s:
            return None
        return delay


@dataclass(frozen=True, slots=True)
class Retry:
    """What the driver tells its caller before each pause: attempt `attempt` failed with `error`."""

    attempt: int
    error: LlmFailure
    delay_s: float

    @property
    def reason(self) -> str:
        return self.error.reason


async def stream_with_retries(
    start: Callable[[], AsyncIterator[str]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[Retry], None] | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> AsyncGenerator[str, None]:
    """The deltas of the first attempt that yields a token; `start()` opens an attempt.

    Raises the last failure when the policy gives up: unchanged after a single attempt, else as
    an LlmFailure whose message adds how many attempts were made in how long.
    """
    began, attempts = clock(), 0
    while True:
        attempts += 1
        deltas, spoken = start(), False
        try:
            first = await _first_delta(deltas, policy.deadline_s - (clock() - began), policy.deadline_s)
            if first is None:
                return  # an empty reply is still a reply
            spoken = True
            yield first
            async for delta in deltas:
                yield delta
            return
        except TransientError as error:
            elapsed = clock() - began
            delay = policy.delay_s(error, attempts=attempts, elapsed_s=elapsed, spoken=spoken, rand=rand())
            if delay is None or not isinstance(error, LlmFailure):  # only LlmFailures are retried
                if attempts == 1 or spoken:
                    raise
                raise _gave_up(error, attempts, elapsed, policy) from error
            if on_retry is not None:
                on_retry(Retry(attempts, error, delay))
        finally:
            await _aclose(deltas)
        await sleep(delay)


async def _first_delta(deltas: AsyncIterator[str], time_left_s: float, deadline_s: float) -> str | None:
    """The first non-empty delta (None if the stream ends without one), within the time left."""
    try:
        async with asyncio.timeout(max(0.0, time_left_s)):
            async for delta in deltas:
                if delta:
                    return delta
            return None
    except TimeoutError:
        raise LlmFailure(
            f"the LLM gave no first token within llm.turn_deadline_s = {deadline_s:g} s: "
            "check the server's load and log, or raise llm.turn_deadline_s",
            reason="deadline",
            retryable=False,
        ) from None


def _gave_up(error: TransientError, attempts: int, elapsed_s: float, policy: RetryPolicy) -> LlmFailure:
    message = (
        f"{error} (gave up after {attempts} attempts in {elapsed_s:.1f} s; llm.turn_deadline_s = {policy.deadline_s:g})"
    )
    return LlmFailure(message, reason=reason_of(error), retryable=False)


async def _aclose(iterator: AsyncIterator[str]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
