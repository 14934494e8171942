"""Integration fixtures: one real voxloop server for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.servers import ServerProcess, free_port, running_server

__all__ = ["ServerProcess", "free_port", "running_server"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole test session (models load once)."""
    with running_server(tmp_path_factory.mktemp("server") / "server.log") as process:
        yield process
