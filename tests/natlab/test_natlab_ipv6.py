"""IPv6 homes (simulations/natlab, `ipv6=True`): two homes whose routers are symmetric NATs on
IPv4 (so IPv4 has no direct path between them: relayed in the plain matrix) and, on IPv6, stateful
firewalls without NAT that drop anything new from outside. Real `overlay-node` processes listen
on both families; dialed by peer ID they must end on a direct WebRTC path over IPv6, each
firewall opened by its own side's outgoing checks. And the firewall holds: a TCP dial straight
at the other home's IPv6 address fails. Skips only where namespaces cannot be made (CI makes
that a failure)."""

from __future__ import annotations

import pytest

from simulations.natlab.matrix import PORT, Home, Matrix
from simulations.natlab.topology import NatType, ipv6_of
from tests.natlab.natlab_fixtures import require_natlab

pytestmark = pytest.mark.timeout(400)

HOMES = {"a-sym": Home(NatType.SYMMETRIC), "b-sym": Home(NatType.SYMMETRIC)}  # two of IPV6_HOMES, the hardest pair
PAIRS = [("a-sym", "b-sym", "direct"), ("b-sym", "a-sym", "direct")]


def after(m: Matrix) -> dict:
    out: dict = {}
    for name in HOMES:
        out[f"{name}_peers"] = m._agent(m.lab.host(name), name, "get", "--path", "/v1/peers")
    b6 = ipv6_of(m.lab.host("b-sym").addr)
    probe = m.lab.run("a-sym", ["python3", "-c", f"import socket; socket.create_connection(({b6!r}, {PORT}), timeout=3)"])
    out["inbound_tcp_refused"] = probe.returncode != 0
    return out


@pytest.fixture(scope="module")
def ipv6():
    require_natlab()
    return Matrix(trials=1, homes=HOMES, pairs=PAIRS, ipv6=True).run(after=after)


def test_two_ipv6_homes_behind_stateful_firewalls_end_on_a_direct_path(ipv6):
    for pair in ipv6["pairs"]:
        assert pair["connected"] and pair["final_path"] == "direct-udp", pair
    a_to_b = {p["peer_id"]: p for p in ipv6["after"]["a-sym_peers"]}
    b_id = ipv6["status"]["b-sym"]["peer_id"]
    remote = a_to_b[b_id]["remote_addrs"]
    assert any(r.startswith(f"/ip6/{ipv6_of('100.64.2.2')}/udp/") and r.endswith("/webrtc") for r in remote), remote


def test_the_firewalls_drop_what_comes_in_new(ipv6):
    assert ipv6["after"]["inbound_tcp_refused"], "a TCP dial from outside got through the IPv6 firewall"


def test_netcheck_reports_ipv6(ipv6):
    for name in HOMES:
        state = ipv6["netcheck"][name]["ipv6"]
        assert state["listening"] and ipv6_of(f"100.64.{list(HOMES).index(name) + 1}.2") in state["addrs"], state
