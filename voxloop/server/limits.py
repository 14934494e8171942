"""Per-connection bounds on what a realtime client sends (the `limits` settings section).

    message size     over limits.max_message_bytes: `message_too_big` error, the message is dropped;
                     uvicorn closes the socket (1009) past 4x that, before the message is even read
    event rate       a token bucket (limits.events_per_s, limits.event_burst): excess messages are dropped
                     with one `rate_limited` error per second; a flood lasting limits.abuse_close_s closes
                     the connection (1008)
    manual turns     audio buffered before a commit, at most limits.max_turn_audio_s

Pure logic on an injectable clock, so the unit tests run it on a virtual one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from voxloop.pipeline.config import LimitsSettings
from voxloop.server.events import ProtocolError

HARD_SIZE_FACTOR = 4  # uvicorn's ws_max_size: max_message_bytes times this
RATE_ERROR_EVERY_S = 1.0  # at most one rate_limited error per this long
CALM_AFTER_S = 1.0  # this long without a dropped message ends a flood


class PolicyViolation(ProtocolError):
    """A client that keeps breaking a limit: the connection is closed with 1008."""


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; each message takes one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def ws_max_size(limits: LimitsSettings) -> int:
    """The hard cap for uvicorn: room above our own limit, so a too-big message still gets a clear error."""
    return limits.max_message_bytes * HARD_SIZE_FACTOR


class InboundLimits:
    """Decides, per received WebSocket message, whether the connection handles it."""

    def __init__(self, limits: LimitsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._bucket = TokenBucket(limits.events_per_s, limits.event_burst, clock())
        self._flood_since: float | None = None
        self._last_drop = self._last_error = float("-inf")
        self.dropped = 0

    def admit(self, message: str | bytes) -> bool:
        """True: handle it. False: drop it quietly (the client was told about its rate this second).
        Raises ProtocolError (too big; rate limited) or PolicyViolation (a sustained flood)."""
        now = self._clock()
        if not self._bucket.take(now):
            return self._over_rate(now)
        if self._flood_since is not None and now - self._last_drop >= CALM_AFTER_S:
            self._flood_since = None
        size = _size(message)
        if size > self.limits.max_message_bytes:
            raise ProtocolError(
                "message_too_big",
                f"the message has {size} bytes; the limit is {self.limits.max_message_bytes} "
                "(limits.max_message_bytes): send audio in smaller appends (e.g. 20-100 ms each)",
            )
        return True

    def _over_rate(self, now: float) -> bool:
        self.dropped += 1
        self._last_drop = now
        if self._flood_since is None:
            self._flood_since = now
        limit = f"{self.limits.events_per_s:g} messages per second (burst {self.limits.event_burst})"
        if now - self._flood_since >= self.limits.abuse_close_s:
            raise PolicyViolation(
                "rate_limited",
                f"over {limit} for {self.limits.abuse_close_s:g} s: closing the connection; reconnect and slow down",
            )
        if now - self._last_error < RATE_ERROR_EVERY_S:
            return False
        self._last_error = now
        raise ProtocolError(
            "rate_limited",
            f"too many messages: the limit is {limit}; messages over it are dropped, and the connection "
            f"closes if this goes on for {self.limits.abuse_close_s:g} s",
        )

    def check_turn_audio(self, samples: int, rate: int) -> None:
        """Manual turns: refuse audio beyond limits.max_turn_audio_s buffered before a commit."""
        if samples > self.limits.max_turn_audio_s * rate:
            raise ProtocolError(
                "input_audio_buffer_full",
                f"the input audio buffer is full ({self.limits.max_turn_audio_s:g} s per turn, "
                "limits.max_turn_audio_s): commit or clear it before appending more",
                param="audio",
            )


def _size(message: str | bytes) -> int:
    if isinstance(message, bytes):
        return len(message)
    return len(message) if message.isascii() else len(message.encode())


def sessions_full(open_sessions: int, limits: LimitsSettings) -> str | None:
    """Why a new session is refused (the server holds limits.max_sessions), or None."""
    if open_sessions < limits.max_sessions:
        return None
    return f"the server is full ({limits.max_sessions} sessions, limits.max_sessions): try again later"
