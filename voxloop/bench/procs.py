"""Subprocesses the benchmark starts (voxloop serve, a llama.cpp server), always stopped again."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from voxloop.bench.llama_server import find_or_build

STARTUP_TIMEOUT_S = 180
# llama-server's niceness: ahead of voxloop's model threads. Its one thread makes every session's
# tokens (a batch step serves all slots), so a step delayed by another session's Whisper or Piper
# call delays every waiting turn. Four users, two rounds, alternating runs on 2 cores: p95 1654 and
# 1802 ms at -10 against 2206 and 2260 at 0. Lowering niceness needs root or CAP_SYS_NICE.
LLM_NICE = -10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Managed:
    """A subprocess in its own process group, logged to a file; `stop()` ends the whole group."""

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None, nice: int = 0
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=functools.partial(_try_nice, nice) if nice else None,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def niceness(self) -> int:
        """The niceness it runs at (its threads inherit it from the main thread at their start)."""
        return os.getpriority(os.PRIO_PROCESS, self.proc.pid)

    def wait_http(self, url: str) -> None:
        """Wait until `url` answers below 500; a process that exits first raises with its log."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited early (see {self.log_path}):\n{self.log_path.read_text()[-3000:]}"
                )
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} was not ready within {STARTUP_TIMEOUT_S} s (see {self.log_path})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _try_nice(nice: int) -> None:
    """In the child before exec: take niceness `nice`, or keep the parent's where that is not allowed."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def start_voxloop(log_dir: Path, env: dict[str, str]) -> tuple[Managed, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "voxloop", "--log-level", "INFO", "serve", "--port", str(port)]
    # The caller's own VOXLOOP_* settings win over the bench's: an A/B run of one setting.
    ours = {key: value for key, value in env.items() if key not in os.environ}
    server = Managed("voxloop serve", cmd, log_dir / "server.log", ours)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_http(f"{url}/healthz")
    except BaseException:
        server.stop()
        raise
    return server, url


def llm_server_threads() -> int:
    """Threads for a llama-server that shares the machine with voxloop: one per four cores, at least one.
    llama.cpp's threads spin at a barrier after every operation of a step; on a few cores kept busy
    by Whisper and Piper, a step then waits for a thread the kernel has put aside: with two threads
    on two shared cores it spent twice the CPU time on the same tokens as with one."""
    return max(1, (os.cpu_count() or 1) // 4)


def start_llama(
    log_dir: Path, model: Path, server: str, slots: int, threads: int | None = None, nice: int = LLM_NICE
) -> tuple[Managed, str]:
    """An OpenAI-compatible server for `model` on a free port: llama.cpp's llama-server with `slots`
    parallel slots (continuous batching) and `threads` threads, or llama-cpp-python's server, which has one;
    at niceness `nice` where the caller may lower it (else its own; see LLM_NICE)."""
    port = free_port()
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if server == "llama-server":
        slotted = [
            *("--parallel", str(slots), "--threads", str(threads or llm_server_threads())),
            # --poll 0: idle threads sleep; polling ones take the cores voxloop shares with it (tokens ~25% slower)
            *("--poll", "0", "--no-webui"),
            # When a conversation's history window moves on, the messages it keeps are still in the
            # slot's cache at other positions: shift them there instead of reading them again.
            *("--cache-reuse", "16"),
            # No prompt cache in RAM: on a moved window (only the system prompt a common prefix) it swaps
            # the slot's cache for a saved prompt with a longer common prefix, which holds none of the
            # kept messages, and the server reads them all again (up to 2 s, no slot decoding meanwhile).
            *("--cache-ram", "0"),
        ]
        cmd = [str(find_or_build()), "--model", str(model), *where, *slotted]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *where]
    llama = Managed(server, cmd, log_dir / "llama.log", nice=nice)
    if llama.niceness != nice:
        print(
            f"{server} runs at niceness {llama.niceness}, not {nice}: lowering it needs root or CAP_SYS_NICE",
            file=sys.stderr,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        llama.wait_http(f"{url}/models")
    except BaseException:
        llama.stop()
        raise
    return llama, url
