from __future__ import annotations

from pathlib import Path

import pytest

from tests.loopback.nodeproc import Proc


@pytest.fixture
def procs():
    """Starts real node processes (tests/loopback/nodeproc.Proc: same arguments) and stops each at the end."""
    started: list[Proc] = []

    def start(args: list[str], data_dir: Path, **kwargs) -> Proc:
        started.append(Proc(args, data_dir, **kwargs))
        return started[-1]

    yield start
    for p in started:
        p.stop()
