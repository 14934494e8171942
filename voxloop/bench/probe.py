"""What a running server holds, read from its /metrics debug view (tests and the soak run share this).

Holdings.read(url)          one scrape: sessions, asyncio tasks, threads, peer connections, RSS, fds
await settled(url, base)    wait until what the server holds is back to `base` (nothing leaked)
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

GAUGES = {
    "sessions": "voxloop_sessions",
    "tasks": "voxloop_asyncio_tasks",
    "threads": "voxloop_threads",
    "peers": "voxloop_peer_connections",
    "rss_bytes": "process_resident_memory_bytes",
    "fds": "process_open_fds",
}


@dataclass(frozen=True, slots=True)
class Holdings:
    sessions: float
    tasks: float
    threads: float
    peers: float
    rss_bytes: float
    fds: float

    @staticmethod
    def parse(text: str) -> Holdings:
        values: dict[str, float] = {}
        for field, name in GAUGES.items():
            found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
            if found is None:
                raise ValueError(f"{name} is not in /metrics: is trace.prometheus on, and the server voxloop?")
            values[field] = float(found.group(1))
        return Holdings(**values)

    @staticmethod
    async def read(url: str, headers: dict[str, str] | None = None) -> Holdings:
        async with httpx.AsyncClient(timeout=10, headers=headers) as http:
            response = await http.get(f"{url}/metrics")
        response.raise_for_status()
        return Holdings.parse(response.text)

    def excess(self, base: Holdings, *, fd_slack: int = 0) -> dict[str, float]:
        """What this holds beyond `base` (sessions, tasks, threads, peers, fds), only the ones above it."""
        over = {
            "sessions": self.sessions - base.sessions,
            "tasks": self.tasks - base.tasks,
            "threads": self.threads - base.threads,
            "peers": self.peers - base.peers,
            "fds": self.fds - base.fds - fd_slack,
        }
        return {name: value for name, value in over.items() if value > 0}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def settled(
    url: str, base: Holdings, *, within: float = 10.0, fd_slack: int = 0, headers: dict[str, str] | None = None
) -> tuple[Holdings, dict[str, float]]:
    """Poll until the server holds no more than `base`; returns the last reading and what it still held
    beyond it (empty: back to the baseline) once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        now = await Holdings.read(url, headers)
        excess = now.excess(base, fd_slack=fd_slack)
        if not excess or time.monotonic() >= deadline:
            return now, excess
        await asyncio.sleep(0.25)
