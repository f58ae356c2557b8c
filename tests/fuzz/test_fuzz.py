"""Each fuzz harness, coverage-guided under atheris for a fixed number of executions (CI's short
run; `python -m tests.fuzz.run NAME --seconds S` is the long one). A crash fails the test and
leaves its input in tests/fuzz/crashes/<name>/: fix the decoder and commit the input, which the
unit layer then replays for good (tests/unit/test_fuzz_regressions.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.fuzz.harnesses import CRASHES, HARNESSES, HERE

RUNS = 30_000  # ~3 s for the slowest harness (the channel relay); most run it in under one
ROOT = HERE.parents[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_a_fixed_run_of_the_harness_finds_no_crash(name: str):
    crashes = CRASHES / name
    before = set(crashes.iterdir()) if crashes.is_dir() else set()
    run = subprocess.run([sys.executable, "-m", "tests.fuzz.run", name, "--runs", str(RUNS)], cwd=ROOT,
                         capture_output=True, text=True, timeout=150)
    found = sorted(set(crashes.iterdir()) - before) if crashes.is_dir() else []
    assert run.returncode == 0 and not found, f"{name}: crash inputs {found}\n{run.stderr[-4000:]}"
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+)", run.stderr)
    assert done, run.stderr[-2000:]
    assert int(done[1]) == RUNS
    assert int(done[2]) > 10, f"{name}: only {done[2]} edges covered: are the decoders instrumented?"
