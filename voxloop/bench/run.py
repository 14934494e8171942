"""One benchmark run: start (or target) a server, run N simulated users at once, gather figures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from voxloop.bench.conversation import Conversation
from voxloop.bench.procs import LLM_NICE, Managed, start_llama, start_voxloop
from voxloop.bench.stats import OVERHEAD_METHOD, aggregate, summary, user_figures
from voxloop.bench.user import SimulatedUser, UserRun
from voxloop.client import RealtimeClient
from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.rtc_client import RtcClient
from voxloop.stages.llm.embedded import resolve_gguf

SAMPLE_S = 0.5
SESSION = {
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000}},
        "output": {"format": {"type": "audio/pcm", "rate": 16000}},
    }
}


@dataclass(frozen=True, slots=True)
class Plan:
    users: int
    llm: str  # "embedded" or "external"
    conversation: Conversation
    polite: bool
    url: str | None  # target this server instead of starting one
    log_dir: Path
    transport: str = "websocket"  # or "webrtc": POST /v1/realtime/calls, Opus tracks, the oai-events channel
    llm_server: str = "llama-server"  # for llm "external": or "llama_cpp.server" (llama-cpp-python's, one slot)
    stagger_s: float = 0.0  # user i starts after i * stagger_s s of silence; 0: every user's turns in lockstep
    rounds: int = 1  # the users talk the conversation through this many times, on new sessions; turns pooled
    llm_threads: int | None = None  # llama-server's threads; None: procs.llm_server_threads()
    llm_nice: int = LLM_NICE  # llama-server's niceness (procs.LLM_NICE), where the bench may lower it


@contextlib.contextmanager
def servers(plan: Plan) -> Iterator[tuple[str, list[Managed]]]:
    """The server URL and the processes started for it; every one is stopped on the way out."""
    started: list[Managed] = []
    try:
        if plan.url is not None:
            yield plan.url, started
            return
        env: dict[str, str] = {}
        if plan.llm == "external":
            gguf = resolve_gguf(LlmSettings().model, AssetStore())  # the embedded default's model
            slots = plan.users if plan.llm_server == "llama-server" else 1
            llama, base_url = start_llama(plan.log_dir, gguf, plan.llm_server, slots, plan.llm_threads, plan.llm_nice)
            started.append(llama)
            env = {
                "VOXLOOP_LLM__BACKEND": "openai",
                "VOXLOOP_LLM__BASE_URL": base_url,
                "VOXLOOP_LLM__MODEL": gguf.stem,
                "VOXLOOP_LLM__SERVER_SLOTS": str(slots),
                "VOXLOOP_LLM__SERVER_PREFILL": str(plan.llm_server == "llama-server").lower(),
                "VOXLOOP_LLM__PIN_SLOTS": str(plan.llm_server == "llama-server").lower(),
            }
        server, url = start_voxloop(plan.log_dir, env)
        started.append(server)
        yield url, started
    finally:
        for process in reversed(started):
            process.stop()


class Sampler:
    """CPU and RSS of the started processes, and the server's event-loop lag from /healthz."""

    def __init__(self, url: str, processes: list[Managed]) -> None:
        self.url = url
        self.procs = {p.name: psutil.Process(p.pid) for p in processes}
        self.cpu: dict[str, list[float]] = {name: [] for name in self.procs}
        self.rss: dict[str, list[float]] = {name: [] for name in self.procs}
        self.cpu_s0 = {name: self._cpu_s(p) for name, p in self.procs.items()}
        # The simulated users share the machine with what they measure: what they take is said too.
        self.own = psutil.Process()
        self.own_cpu_s0 = self._own_cpu_s()
        self.machine0 = psutil.cpu_times()
        self.lag: list[dict[str, float]] = []

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        return [proc, *proc.children(recursive=True)]

    def _cpu_s(self, proc: psutil.Process) -> float:
        return sum(_cpu_of(p) for p in self._tree(proc))

    def _own_cpu_s(self) -> float:
        return _cpu_of(self.own)

    async def watch(self) -> None:
        for proc in self.procs.values():
            proc.cpu_percent()
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                await asyncio.sleep(SAMPLE_S)
                for name, proc in self.procs.items():
                    self.cpu[name].append(proc.cpu_percent())
                    self.rss[name].append(sum(p.memory_info().rss for p in self._tree(proc)) / 2**20)
                health = (await http.get(f"{self.url}/healthz")).json()
                if health.get("loop_lag_ms"):
                    self.lag.append(health["loop_lag_ms"])

    def figures(self, frames: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, proc in self.procs.items():
            cpu_s = self._cpu_s(proc) - self.cpu_s0[name]
            out[name] = {
                "cpu_percent": summary(self.cpu[name]),
                "cpu_s": round(cpu_s, 2),
                "rss_mib": summary(self.rss[name]),
            }
        out["bench (simulated users)"] = {"cpu_s": round(self._own_cpu_s() - self.own_cpu_s0, 2)}
        serve = out.get("voxloop serve")
        if serve is not None and frames:
            serve["cpu_ms_per_input_frame"] = round(serve["cpu_s"] * 1000 / frames, 3)
        lag = {
            "p50": summary([x["p50"] for x in self.lag])["p50"],
            "p99": max((x["p99"] for x in self.lag), default=None),
            "max": max((x["max"] for x in self.lag), default=None),
        }
        return {"processes": out, "loop_lag_ms": lag if self.lag else None, "machine": self._machine()}

    def _machine(self) -> dict[str, float]:
        """The whole machine over the run, in percent of all its cores: busy, and stolen by the
        hypervisor (Linux; a virtual machine's neighbours). A run with much steal is not comparable."""
        now = psutil.cpu_times()
        spent = {field: getattr(now, field) - getattr(self.machine0, field) for field in now._fields}
        total = sum(spent.values()) or 1.0
        idle = spent.get("idle", 0.0) + spent.get("iowait", 0.0)
        return {
            "busy_percent": round(100 * (total - idle - spent.get("steal", 0.0)) / total, 1),
            "steal_percent": round(100 * spent.get("steal", 0.0) / total, 1),
        }


def _cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def _connect(url: str, plan: Plan) -> RealtimeClient:
    if plan.transport == "webrtc":
        return await RtcClient.connect_rtc(url)
    return await RealtimeClient.connect(url.replace("http", "ws", 1) + "/v1/realtime")


async def _one_user(url: str, plan: Plan, index: int) -> UserRun:
    async with await _connect(url, plan) as client:
        await client.update_session(SESSION)
        user = SimulatedUser(client, plan.conversation, polite=plan.polite, lead_in_s=index * plan.stagger_s)
        return await user.talk()


async def _users(url: str, started: list[Managed], plan: Plan) -> dict[str, Any]:
    sampler = Sampler(url, started)
    watcher = asyncio.create_task(sampler.watch(), name="bench-sampler")
    begun = time.monotonic()
    try:
        users = []
        for _ in range(plan.rounds):
            runs = await asyncio.gather(*(_one_user(url, plan, i) for i in range(plan.users)))
            # Figured once the round is over: done while other users still talk, it would hold up their loop.
            users += [user_figures(run, plan.conversation) for run in runs]
    finally:
        await cancel_and_wait(watcher)
    overall = aggregate(users)
    return {
        "wall_s": round(time.monotonic() - begun, 1),
        "overall": overall,
        "resources": sampler.figures(overall["frames_sent"]),
        "per_user": users,
    }


def run_plan(plan: Plan) -> dict[str, Any]:
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with servers(plan) as (url, started):
        result = asyncio.run(_users(url, started, plan))
    return {
        "llm": plan.llm if plan.url is None else "as configured at the target URL",
        "llm_server": plan.llm_server if plan.llm == "external" and plan.url is None else None,
        "users": plan.users,
        "transport": plan.transport,
        "conversation": plan.conversation.conv_id,
        "audio_s": round(len(plan.conversation.pcm) / 16000, 2),
        "polite": plan.polite,
        "stagger_s": plan.stagger_s,
        "rounds": plan.rounds,
        "llm_threads": plan.llm_threads,
        "llm_nice": plan.llm_nice,
        "overhead_method": OVERHEAD_METHOD,
        **result,
    }
