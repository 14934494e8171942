"""Kiosk mode: when a woken session goes back to sleep, and when it forgets its visitor.

    wake word ─► awake (awake_s to start talking) ─► turn … reply played ─► follow-up window
        ▲                                                                    │ silence past follow_up_s,
        └──────────────────────────── asleep ◄───────────────────────────────┘ or a goodbye answered
    idle_reset_s after the last turn: the conversation history is cleared (the next visitor starts fresh)

`KioskPolicy` is the pure part: times in nanoseconds on the session clock, no asyncio.
`KioskController` wires it to a Session: it watches turns (the VAD's `user_speaking`, the
session state), runs one timer task that fires the deadlines even when no audio arrives, and
calls back to close the wake gate. `chime()` is the acknowledgement sound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from voxloop.pipeline.config import KioskSettings
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.tasks import cancel_and_wait

log = logging.getLogger(__name__)

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Due:
    sleep: bool = False  # the session falls asleep now
    forget: bool = False  # the conversation history is cleared now


class KioskPolicy:
    """Deadlines for sleeping and forgetting. Every method takes the time it happens at."""

    def __init__(self, *, awake_s: float, follow_up_s: float, idle_reset_s: float) -> None:
        self._awake_ns = round(awake_s * NS)
        self._follow_up_ns = round(follow_up_s * NS)
        self._idle_ns = round(idle_reset_s * NS)
        self.asleep = True
        self._in_turn = False
        self._goodbye = False  # the turn that just ended was a goodbye
        self._sleep_at: int | None = None  # None: asleep, or a turn is in progress
        self._forget_at: int | None = None  # None: nothing to forget, or a turn is in progress

    def wake(self, now: int) -> bool:
        """A wake word was heard. True if it woke the session (else it only extends the window)."""
        if not self.asleep:
            if not self._in_turn and self._sleep_at is not None:
                self._sleep_at = max(self._sleep_at, now + self._awake_ns)
            return False
        self.asleep, self._in_turn, self._sleep_at = False, False, now + self._awake_ns
        return True

    def activity(self, now: int, *, in_turn: bool, goodbye: bool = False) -> None:
        """Whether a turn is in progress (the user speaking, or a reply being thought or spoken).

        When a turn ends the follow-up window opens; a goodbye closes it at once.
        """
        if self.asleep:
            return
        if in_turn:
            self._in_turn, self._sleep_at, self._forget_at = True, None, None
        elif self._in_turn:
            self._in_turn, self._goodbye = False, goodbye
            self._sleep_at = now if goodbye else now + self._follow_up_ns
            self._forget_at = now + self._idle_ns

    def played_until(self, t: int) -> None:
        """The reply's audio, sent faster than real time, plays on until `t`: windows count from then."""
        if self.asleep or self._in_turn or self._sleep_at is None:
            return
        self._sleep_at = max(self._sleep_at, t + (0 if self._goodbye else self._follow_up_ns))
        if self._forget_at is not None:
            self._forget_at = max(self._forget_at, t + self._idle_ns)

    def due(self, now: int) -> Due:
        """What is due at `now`; each is reported once."""
        sleep = self._sleep_at is not None and now >= self._sleep_at
        forget = self._forget_at is not None and now >= self._forget_at
        if sleep:
            self.asleep, self._sleep_at = True, None
        if forget:
            self._forget_at = None
        return Due(sleep, forget)

    def next_deadline(self) -> int | None:
        pending = [t for t in (self._sleep_at, self._forget_at) if t is not None]
        return min(pending) if pending else None


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def is_goodbye(text: str, phrases: Sequence[str]) -> bool:
    """Does the utterance end with a goodbye phrase ("okay, goodbye!", "that's all")?"""
    said = _words(text)
    for phrase in phrases:
        words = _words(phrase)
        if words and said[-len(words) :] == words:
            return True
    return False


@functools.lru_cache(maxsize=8)
def chime(sample_rate: int) -> PCM16:
    """A short two-note chime (E5 then A5, soft attack, exponential decay), about 0.35 s."""
    notes = ((659.25, 0.0), (880.0, 0.11))  # (Hz, start s)
    length = round(0.35 * sample_rate)
    t = np.arange(length) / sample_rate
    out = np.zeros(length, dtype=np.float64)
    for freq, start in notes:
        local = t - start
        on = local >= 0
        envelope = np.where(on, np.minimum(local / 0.008, 1.0) * np.exp(-np.maximum(local, 0) / 0.09), 0.0)
        out += envelope * (np.sin(2 * np.pi * freq * local) + 0.25 * np.sin(4 * np.pi * freq * local))
    fade = np.minimum(1.0, (length - np.arange(length)) / (0.01 * sample_rate))  # no click at the end
    pcm: PCM16 = (out * fade / np.max(np.abs(out)) * 0.3 * 32767).astype(np.int16)
    pcm.setflags(write=False)
    return pcm


class KioskController:
    """The policy on a live Session: watches its turns and fires deadlines from one timer task."""

    def __init__(
        self,
        session: Session,
        settings: KioskSettings,
        *,
        awake_s: float,
        on_sleep: Callable[[], None],
    ) -> None:
        self.session = session
        self.settings = settings
        self.policy = KioskPolicy(awake_s=awake_s, follow_up_s=settings.follow_up_s, idle_reset_s=settings.idle_reset_s)
        self._on_sleep = on_sleep
        self._changed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._turn_history = 0  # len(history) when the turn in progress began
        session.on_state(lambda _state: self.observe())

    async def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.create_task(self._run(), name=f"kiosk-timer-{self.session.id}")

    async def close(self) -> None:
        if self._timer is not None:
            await cancel_and_wait(self._timer)
            self._timer = None

    def woke(self) -> bool:
        woke = self.policy.wake(self.session.now_ns())
        if woke:
            self._turn_history = len(self.session.history)
        self._changed.set()
        return woke

    def observe(self) -> None:
        """Tell the policy whether a turn is in progress now (called per audio frame and state change)."""
        session = self.session
        in_turn = session.user_speaking or session.state in (State.THINKING, State.SPEAKING)
        before = self.policy.next_deadline()
        goodbye = not in_turn and self._said_goodbye()
        self.policy.activity(session.now_ns(), in_turn=in_turn, goodbye=goodbye)
        if in_turn:
            self._turn_history = min(self._turn_history, len(session.history))
        else:
            self._turn_history = len(session.history)
        if self.policy.next_deadline() != before:
            self._changed.set()

    def _said_goodbye(self) -> bool:
        new = self.session.history[self._turn_history :]
        said = [m.content for m in new if m.role == "user"]
        return bool(said) and is_goodbye(said[-1], self.settings.goodbye_phrases)

    def played_until(self, t_ns: int) -> None:
        """The client plays the reply until `t_ns` (session clock): the follow-up window starts then."""
        self.policy.played_until(t_ns)
        self._changed.set()

    def tick(self) -> Due:
        """Apply whatever is due now: fall asleep, forget the conversation."""
        self.observe()
        due = self.policy.due(self.session.now_ns())
        if due.sleep:
            log.info("kiosk asleep", extra={"event": "kiosk_asleep", "session": self.session.id})
            self._on_sleep()
        if due.forget:
            log.info(
                "kiosk history cleared",
                extra={"event": "kiosk_idle_reset", "session": self.session.id, "messages": len(self.session.history)},
            )
            self.session.forget()
            self._turn_history = 0
        return due

    async def _run(self) -> None:
        while True:
            self._changed.clear()
            deadline = self.policy.next_deadline()
            delay = None if deadline is None else max(0.0, (deadline - self.session.now_ns()) / NS)
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass
            self.tick()
