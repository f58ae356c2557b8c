"""Helpers for tests that run in the network-namespace NAT lab (simulations/natlab)."""

from __future__ import annotations

import os
import select
import subprocess
import time
from typing import Any

import pytest

from simulations.natlab import Lab

REQUIRE_ENV = "OVERLAY_REQUIRE_NATLAB"


def require_natlab() -> None:
    """Skip the calling test or fixture where no lab can be built, with the reason; fail instead when
    OVERLAY_REQUIRE_NATLAB=1 (CI), so a machine that lost the lab cannot pass by skipping."""
    ok, why = Lab.available()
    if ok:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"NAT lab unavailable but {REQUIRE_ENV}=1: {why}", pytrace=False)
    pytest.skip(f"NAT lab unavailable: {why}")


def wait_for_line(proc: subprocess.Popen[Any], expected: str, timeout: float) -> None:
    """Read `proc`'s stdout pipe until a line equal to `expected`; fail after `timeout` s.

    Reads the pipe's descriptor a byte at a time, so nothing after that line is taken from the
    caller and select() never waits on data already sitting in a Python buffer.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        byte = os.read(fd, 1)
        if byte == b"":
            raise AssertionError(f"{proc.args} exited ({proc.wait(timeout=5)}) before printing {expected!r}")
        if byte != b"\n":
            line += byte
        elif line.decode(errors="replace").strip() == expected:
            return
        else:
            line = b""
    raise AssertionError(f"{proc.args} did not print {expected!r} within {timeout}s")
