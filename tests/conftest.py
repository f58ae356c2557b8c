"""Shared by every layer, so it imports only what the cores need: quiet logs and `wait_for`.
The node helpers (in-process clusters, node processes, API clients) are in tests/loopback."""

from __future__ import annotations

import pytest
import trio

from overlay.core.log import setup_logging


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs():
    setup_logging("warning")


async def wait_for(condition, timeout: float = 20.0, interval: float = 0.02, what: str = "condition") -> None:
    """Poll `condition` until true; fail the test after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(interval)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
