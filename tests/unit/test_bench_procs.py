"""The benchmark's subprocesses: the niceness they are started at."""

from __future__ import annotations

import os
from pathlib import Path

from voxloop.bench.procs import Managed


def test_a_process_starts_at_the_niceness_asked_for(tmp_path: Path) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    raised = Managed("sleeper", ["sleep", "30"], tmp_path / "a.log", nice=min(19, ours + 5))
    plain = Managed("sleeper", ["sleep", "30"], tmp_path / "b.log")
    try:
        assert raised.niceness == min(19, ours + 5)
        assert plain.niceness == ours
    finally:
        raised.stop()
        plain.stop()


def test_a_niceness_it_may_not_take_leaves_the_process_running(tmp_path: Path) -> None:
    """Lowering niceness past what the user may (root may go to -20, nobody below) is not an error."""
    proc = Managed("sleeper", ["sleep", "30"], tmp_path / "c.log", nice=-40)
    try:
        assert proc.proc.poll() is None
        assert proc.niceness >= -20
    finally:
        proc.stop()
