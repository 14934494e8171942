"""The soak run: simulated users for a long while, plus connect/disconnect churn, watching for leaks.

    N users      each streams a real conversation excerpt at real-time pace (bench/user.py), one
                 connection per pass, pass after pass until the duration is up
    M cycles     sequential, spread over the duration: connect, (every other one) send some audio,
                 disconnect, alternately cleanly (close frame) and abruptly (the TCP connection dropped)
    sampler      every few seconds, what the server holds from /metrics (bench/probe.py): sessions,
                 asyncio tasks, threads, peer connections, RSS, open fds

Checks (each failing one makes `ok` false): once every client has gone, the sessions, tasks, peer
connections and fds the server holds are back to the baseline taken after a warm-up at the same
concurrency, and its threads to at most the most seen in the first third of the run (thread pools may
keep what the load needed early on; a leak grows with the run) — no leak; RSS after warm-up stays
within the stated band; no errors other than the injected disconnects. Reported, not checked: p95 voice-to-voice per
time window (first against last: does the server slow down as it runs?).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.bench.conversation import RATE, Conversation
from voxloop.bench.probe import Holdings, settled
from voxloop.bench.run import SESSION, Plan, servers
from voxloop.bench.stats import summary, turns
from voxloop.bench.user import SimulatedUser
from voxloop.client import ClientError, RealtimeClient
from voxloop.pipeline.tasks import cancel_and_wait

SAMPLE_S = 2.0
SETTLE_S = 15.0
CYCLE_AUDIO_S = 0.6
FD_SLACK = 2  # sockets of the sampler's own scrapes may still be closing


@dataclass(frozen=True, slots=True)
class SoakPlan:
    users: int
    duration_s: float
    cycles: int
    conversation: Conversation  # one pass of a user
    url: str | None  # soak this running server instead of starting one
    log_dir: Path
    rss_band_mib: float = 400.0  # RSS after warm-up may rise at most this far above its warm-up value
    window_s: float = 60.0  # voice-to-voice p95 is reported per window of this length


@dataclass
class Tally:
    """What the clients saw: turns with their time, errors that were not injected, cycles run."""

    turns: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    passes: int = 0
    cycles: int = 0


@dataclass
class Samples:
    at: list[float] = field(default_factory=list)
    held: list[Holdings] = field(default_factory=list)

    async def watch(self, url: str, begun: float) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):  # a scrape that fails is a missing sample, not an end
                self.held.append(await Holdings.read(url))
                self.at.append(time.monotonic() - begun)
            await asyncio.sleep(SAMPLE_S)


def ws_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/v1/realtime"


async def _pass(url: str, plan: SoakPlan, tally: Tally, begun: float) -> None:
    async with await RealtimeClient.connect(ws_url(url)) as client:
        await client.update_session(SESSION)
        run = await SimulatedUser(client, plan.conversation, polite=True).talk()
    done_at = {r.event["response"]["id"]: r.at for r in run.client.received if r.event.get("type") == "response.done"}
    for turn in turns(run):
        tally.turns.append({"t_s": round(done_at[turn["response_id"]] - begun, 2), "v2v_ms": turn["client_v2v_ms"]})
    tally.errors += [
        f"{e['error']['code']}: {e['error']['message']}" for e in run.client.events if e["type"] == "error"
    ]
    tally.passes += 1


async def _user(url: str, plan: SoakPlan, tally: Tally, begun: float) -> None:
    while time.monotonic() - begun < plan.duration_s:
        try:
            await _pass(url, plan, tally, begun)
        except ClientError as exc:
            tally.errors.append(f"user: {exc}")


async def _cycle(url: str, index: int, audio: np.ndarray) -> None:
    """One connection that comes and goes; odd ones send audio first, every other one drops the TCP link."""
    client = await RealtimeClient.connect(ws_url(url))
    try:
        await client.wait_for("session.created", within=10)
        if index % 2:
            await client.update_session(SESSION)
            await client.stream(audio, rate=RATE, realtime=False)
        if index % 4 >= 2:
            transport = getattr(client.ws, "transport", None)
            if transport is not None:
                transport.abort()  # abrupt: no close frame, no FIN handshake
    finally:
        await client.close()


async def _cycles(url: str, plan: SoakPlan, tally: Tally) -> None:
    audio = plan.conversation.pcm[: int(CYCLE_AUDIO_S * RATE)]
    every = plan.duration_s / max(plan.cycles, 1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(plan.cycles):
        await asyncio.sleep(max(0.0, start + index * every - loop.time()))
        try:
            await _cycle(url, index, audio)
        except ClientError as exc:
            tally.errors.append(f"cycle {index}: {exc}")
        tally.cycles += 1


async def _warm_up(url: str, plan: SoakPlan) -> Holdings:
    """One pass of every user at once and one cycle of each kind, so the model workers' pools and the
    executors have the threads this load needs; then what the server holds at rest: the baseline."""
    tally = Tally()
    audio = plan.conversation.pcm[: int(CYCLE_AUDIO_S * RATE)]
    passes = [_pass(url, plan, tally, time.monotonic()) for _ in range(max(plan.users, 1))]
    await asyncio.gather(*passes, *(_cycle(url, index, audio) for index in range(4)))
    await settled(url, await Holdings.read(url), within=3)
    await asyncio.sleep(1.0)
    return await Holdings.read(url)


def windows(points: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    """Voice-to-voice summary per window of `window_s` seconds (by when the reply finished)."""
    out = []
    last = max((p["t_s"] for p in points), default=0.0)
    for index in range(int(last // window_s) + 1):
        lo, hi = index * window_s, (index + 1) * window_s
        values = [p["v2v_ms"] for p in points if lo <= p["t_s"] < hi and p["v2v_ms"] is not None]
        out.append({"from_s": lo, "to_s": hi, "voice_to_voice_ms": summary(values)})
    return out


def checks(
    base: Holdings, end: Holdings, excess: dict[str, float], rss: list[float], plan: SoakPlan, tally: Tally
) -> dict[str, Any]:
    warm_rss = base.rss_bytes / 2**20
    top = max(rss, default=warm_rss)
    band = warm_rss + plan.rss_band_mib
    return {
        "no_leak": {"ok": not excess, "left_over": excess, "baseline": base.as_dict(), "end": end.as_dict()},
        "rss_in_band": {
            "ok": top <= band,
            "band_mib": [round(warm_rss, 1), round(band, 1)],
            "definition": f"RSS may rise at most {plan.rss_band_mib:g} MiB above its value after warm-up",
        },
        "no_unexpected_errors": {"ok": not tally.errors, "errors": tally.errors[:20], "count": len(tally.errors)},
        "turns_answered": {"ok": bool(tally.turns), "turns": len(tally.turns)},
    }


async def soak_server(url: str, plan: SoakPlan) -> dict[str, Any]:
    base = await _warm_up(url, plan)
    tally, samples = Tally(), Samples()
    begun = time.monotonic()
    sampler = asyncio.create_task(samples.watch(url, begun), name="soak-sampler")
    try:
        clients = [_user(url, plan, tally, begun) for _ in range(plan.users)]
        await asyncio.gather(*clients, _cycles(url, plan, tally))
    finally:
        await cancel_and_wait(sampler)
    wall_s = time.monotonic() - begun
    early = samples.held[: max(1, len(samples.held) // 3)]
    allowed = dataclasses.replace(base, threads=max([base.threads, *(h.threads for h in early)]))
    end, excess = await settled(url, allowed, within=SETTLE_S, fd_slack=FD_SLACK)
    rss = [h.rss_bytes / 2**20 for h in samples.held]
    per_window = windows(tally.turns, plan.window_s)
    found = checks(allowed, end, excess, rss, plan, tally)
    return {
        "ok": all(check["ok"] for check in found.values()),
        "checks": found,
        "users": plan.users,
        "duration_s": plan.duration_s,
        "wall_s": round(wall_s, 1),
        "passes": tally.passes,
        "cycles": tally.cycles,
        "conversation": plan.conversation.conv_id,
        "turns": len(tally.turns),
        "voice_to_voice_ms": summary([t["v2v_ms"] for t in tally.turns if t["v2v_ms"] is not None]),
        "windows": per_window,
        "stability": stability(per_window),
        "rss_mib": {**summary(rss), "min": round(min(rss), 1) if rss else None, "growth": growth(rss)},
        "samples": [{"t_s": round(t, 1), **h.as_dict()} for t, h in zip(samples.at, samples.held, strict=True)],
    }


def growth(rss: list[float]) -> float | None:
    """Mean RSS of the last fifth of the samples minus that of the first fifth (MiB)."""
    if len(rss) < 5:
        return None
    fifth = len(rss) // 5
    return round(float(np.mean(rss[-fifth:]) - np.mean(rss[:fifth])), 1)


def stability(per_window: list[dict[str, Any]]) -> dict[str, Any]:
    filled = [w for w in per_window if w["voice_to_voice_ms"]["n"]]
    if len(filled) < 2:
        return {"first_p95_ms": None, "last_p95_ms": None, "ratio": None}
    first, last = filled[0]["voice_to_voice_ms"]["p95"], filled[-1]["voice_to_voice_ms"]["p95"]
    return {"first_p95_ms": first, "last_p95_ms": last, "ratio": round(last / first, 2) if first else None}


def run_soak(plan: SoakPlan) -> dict[str, Any]:
    """Start a server (or use plan.url), soak it, stop what was started."""
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    bench_plan = Plan(plan.users, "embedded", plan.conversation, True, plan.url, plan.log_dir)
    with servers(bench_plan) as (url, _started):
        return asyncio.run(soak_server(url, plan))


def report(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['users']} users x {result['duration_s']:g} s (+{result['cycles']} connect/disconnect cycles), "
        f"{result['passes']} passes, {result['turns']} turns in {result['wall_s']} s",
        f"  voice-to-voice {result['voice_to_voice_ms']}; p95 first window {result['stability']['first_p95_ms']} ms, "
        f"last {result['stability']['last_p95_ms']} ms",
        f"  RSS MiB {result['rss_mib']}",
    ]
    for name, check in result["checks"].items():
        detail = {k: v for k, v in check.items() if k not in ("ok", "baseline", "end")}
        lines.append(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {detail}")
    lines.append("soak: " + ("passed" if result["ok"] else "FAILED"))
    return "\n".join(lines)
