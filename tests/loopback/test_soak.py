"""The soak benchmark's short version: benchmarks/soak.py for two minutes (six node processes,
the mixed workload, a neighbour restarted every 30 s), failing on a growth of node 0's RSS,
descriptors, trio tasks or open streams above the benchmark's stated LIMITS per minute, on a
crash, or on a workload that did not run (lookups, dials, deliveries and reconnects counted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(420)


def test_two_minutes_of_mixed_load_grow_nothing_above_the_stated_slopes(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes", "2", "--sample", "10",
                          "--restart-every", "30", "--check", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=400)
    assert (tmp_path / "soak.png").stat().st_size > 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert run.returncode == 0, f"growth {result['growth_per_minute']} over {result['limits']}: {result['over']}; " \
                                f"crashed: {result['crashed']}\n{run.stderr[-3000:]}"
    counts = result["counts"]
    assert counts["restarts"] >= 3 and counts["reconnects"] >= 60 and counts["relayer_sessions"] >= 20, counts
    assert counts["lookups_found"] >= 0.95 * counts["lookups"] > 0, counts
    assert counts["dials_ok"] >= 0.95 * counts["dials"] > 0, counts
    assert result["delivered_per_subscriber"]["0"] >= 0.99 * counts["published"] > 0, "node 0's own subscriber"
