"""The NAT lab's connection matrix (simulations/natlab/matrix.py): real overlay-node processes
behind real iptables NATs, the 16 ordered pairs of public, full-cone, port-restricted and
symmetric homes. Skips only where namespaces cannot be made (CI makes that a failure)."""

from __future__ import annotations

import pytest

from simulations.natlab.matrix import NO_DIRECT_PATH, TYPES, Matrix
from tests.natlab.natlab_fixtures import require_natlab

pytestmark = pytest.mark.timeout(600)

NETCHECK_NAMES = {"pub": "public", "full": "full-cone", "prc": "port-restricted-cone", "sym": "symmetric"}


@pytest.fixture(scope="module")
def matrix():
    require_natlab()
    return Matrix(trials=3).run()


def test_every_pair_connects_and_ends_direct_wherever_the_nats_allow(matrix):
    pairs = {(p["a"], p["b"]): p for p in matrix["pairs"]}
    assert len(pairs) == 16
    for (a, b), p in pairs.items():
        assert p["connected"], f"{a} -> {b}: {p['errors']}"
        if (a, b) in NO_DIRECT_PATH:
            assert p["final_path"] == "relayed", f"{a} -> {b} has no direct path, got {p['final_path']}"
        else:
            assert p["final_path"] in ("direct-tcp", "direct-udp"), f"{a} -> {b} stayed {p['final_path']}"
    assert matrix["summary"]["direct"] == 13 and matrix["summary"]["relayed"] == 3


def test_median_time_to_first_stream_is_under_a_second_for_every_pair(matrix):
    for p in matrix["pairs"]:
        assert len(p["first_stream_ms"]) == 3
        assert p["median_first_stream_ms"] < 1000, f"{p['a']} -> {p['b']}: {p['first_stream_ms']}"


def test_netcheck_names_the_nat_type_behind_every_router(matrix):
    for side in "ab":
        for short in TYPES:
            check = matrix["netcheck"][f"{side}-{short}"]
            assert check["nat_type"] == NETCHECK_NAMES[short], f"{side}-{short}: {check}"
            assert check["reachability"] == ("public" if short == "pub" else "private")
