"""Integration fixtures: one real voxloop server for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.servers import ServerProcess, free_port

__all__ = ["ServerProcess", "free_port"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole test session (models load once)."""
    process = ServerProcess(free_port(), tmp_path_factory.mktemp("server") / "server.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()
