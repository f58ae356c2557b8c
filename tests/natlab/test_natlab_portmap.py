"""Port mapping against a real IGD: miniupnpd (built by simulations/natlab/igd.py from Debian's
source package) on port-restricted routers, speaking UPnP-IGD v2, UPnP-IGD v1, PCP or NAT-PMP, and
real overlay-node processes behind them (simulations/natlab/matrix.py's port-mapping rows).

Without a mapping, a symmetric home cannot reach a port-restricted one directly; with it, every
row ends on direct TCP to the mapped port. Stopping a node removes its mappings from the router.
Skips only where namespaces cannot be made (CI makes that a failure)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from simulations.natlab import igd
from simulations.natlab.matrix import PORTMAP_HOMES, PORTMAP_PAIRS, PORT, Matrix
from tests.natlab.natlab_fixtures import require_natlab

pytestmark = pytest.mark.timeout(600)

PROTOCOL = {"b-upnp2": "UPnP-IGD", "b-upnp1": "UPnP-IGD", "b-pcp": "PCP", "b-natpmp": "NAT-PMP"}
SERVICE = {"b-upnp2": "WANIPConnection:2#AddPortMapping", "b-upnp1": "WANIPConnection:1#AddPortMapping"}

# Run in a host behind an IGD without secure mode: a mapping of external port 4101 to another LAN
# address takes the port first; then the client asks for 4101 -> 4101 (prints the lease or the error).
CONFLICT = textwrap.dedent("""
    import miniupnpc, trio
    from nat.upnp import UpnpClient, discover

    async def main():
        gateway = "{gateway}"
        other = miniupnpc.UPnP()
        other.selectigd(await discover(gateway))
        other.addportmapping(4101, "TCP", "{neighbour}", 4101, "another host", "", 600)
        client = UpnpClient(gateway)
        try:
            lease = await client.map("tcp", 4101, 600)
            print("mapped", lease.external_port)
            await client.unmap("tcp", 4101)
        except Exception as e:
            print("error", e)
        other.deleteportmapping(4101, "TCP")

    trio.run(main)
""")


def after(matrix: Matrix) -> dict:
    """With the lab still up: each mapped home's IGD log and rules, a port conflict on both IGD
    versions, and the rules left once its node stopped."""
    out = {}
    for name in PROTOCOL:
        lab = matrix.lab
        entry = {"rules": igd.mappings(lab, name)}
        if name.startswith("b-upnp"):
            gateway = lab.router(name).addrs[1]
            neighbour = gateway.rsplit(".", 1)[0] + ".3"
            done = lab.run(name, [sys.executable, "-c", CONFLICT.format(gateway=gateway, neighbour=neighbour)], timeout=60)
            entry["conflict"] = (done.stdout + done.stderr).strip()
        node = matrix.nodes[name]
        node.terminate()
        entry["exit"] = node.wait(timeout=20)
        entry["rules_after_stop"] = igd.mappings(lab, name)
        entry["igd_log"] = (matrix.root / f"{name}-igd" / "miniupnpd.log").read_text(errors="replace")
        out[name] = entry
    return out


@pytest.fixture(scope="module")
def rows():
    require_natlab()
    return Matrix(trials=2, homes=PORTMAP_HOMES, pairs=PORTMAP_PAIRS).run(after=after)


def test_every_row_ends_on_direct_tcp_to_the_mapped_port(rows):
    assert len(rows["pairs"]) == 8
    for p in rows["pairs"]:
        assert p["connected"], f"{p['a']} -> {p['b']}: {p['errors']}"
        assert p["final_path"] == "direct-tcp", f"{p['a']} -> {p['b']} stayed {p['final_path']}"
        assert p["median_first_stream_ms"] < 1000, f"{p['a']} -> {p['b']}: {p['first_stream_ms']}"


def test_each_node_maps_with_its_routers_protocol_and_publishes_the_mapped_address(rows):
    for name, protocol in PROTOCOL.items():
        status = rows["status"][name]
        mapping = rows["netcheck"][name]["port_mapping"]
        wan = f"198.18.{list(PORTMAP_HOMES).index(name) + 2}.2"
        assert mapping["state"] == "mapped" and mapping["protocol"] == protocol, f"{name}: {mapping}"
        assert mapping["external"] == f"{wan}:{PORT}" and mapping["udp"] == f"{wan}:{PORT}", f"{name}: {mapping}"
        assert status["reachability"] == "public", f"{name}: re-checked through the mapping"
        assert f"/ip4/{wan}/tcp/{PORT}" in status["record_addrs"], f"{name}: {status['record_addrs']}"
    for name in ("a-sym", "a-prc"):  # routers without an IGD: every protocol tried, each says why
        mapping = rows["netcheck"][name]["port_mapping"]
        assert mapping["state"] == "none", f"{name}: {mapping}"
        assert all(p in mapping["error"] for p in ("PCP", "NAT-PMP", "UPnP-IGD")), mapping["error"]


def test_the_upnp_rows_speak_igd_v2_and_v1_and_a_conflict_gets_another_port(rows):
    """miniupnpd answers AddAnyPortMapping also when it describes itself as IGDv1 (a true IGDv1
    router would answer Invalid Action, and the mapping would fail with that error)."""
    checks = rows["after"]
    for name, service in SERVICE.items():
        assert service in checks[name]["igd_log"], f"{name} did not use {service}"
        conflict = checks[name]["conflict"]
        assert conflict.startswith("mapped ") and conflict != "mapped 4101", f"{name}: {conflict}"
        assert "AddAnyPortMapping" in checks[name]["igd_log"], f"{name}: the gateway chose the port"


def test_a_stopped_node_removes_its_mappings_from_the_router(rows):
    for name, entry in rows["after"].items():
        assert entry["exit"] == 0, f"{name} exited {entry['exit']}"
        assert f"dnat ip to 100.64.{list(PORTMAP_HOMES).index(name) + 1}.2:{PORT}" in entry["rules"], entry["rules"]
        assert entry["rules_after_stop"] == "", f"{name} left {entry['rules_after_stop']}"
