"""A real voxloop server for tests: `voxloop serve` in a subprocess on a free port."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from voxloop.bench.procs import Managed, free_port

__all__ = ["ServerProcess", "free_port", "running_server"]


class ServerProcess:
    def __init__(self, port: int, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/realtime"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "voxloop", "--log-level", "INFO", "serve", "--port", str(port)]
        self._process = Managed("voxloop serve", cmd, log_path, env)

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self._process.proc

    def wait_ready(self) -> None:
        self._process.wait_http(f"{self.url}/healthz")

    def stop(self) -> int | None:
        """Stop the server (and anything it started); returns its exit status."""
        self._process.stop()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def running_server(log_path: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A server on a free port with `env` added, ready to answer; stopped on leaving."""
    process = ServerProcess(free_port(), log_path, env)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
