"""The NAT lab's topology behaves as the NAT types it claims.

Shown with plain UDP sockets only (simulations/natlab/probe.py), none of the node's code, so a
failure here is the lab's and not the node's. The lab is built once per module for the behaviour
tests; the cleanup tests build their own.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from simulations.natlab import Lab, LabError, NatType, probe
from simulations.natlab.topology import LAB_NETS, check_available
from tests.natlab.natlab_fixtures import require_natlab, wait_for_line

HOMES = {"pub": "public", "full": "full-cone", "prc": "port-restricted", "sym": "symmetric"}
PORT, OTHER_PORT = 3478, 3479
PROBE = probe.__file__
# absence can only be shown by waiting: the one fixed wait, and only negative outcomes pay it
NO_ARRIVAL_WAIT = 1.0


def start_probe_server(lab: Lab) -> subprocess.Popen[Any]:
    argv = [sys.executable, PROBE, "serve", "--port", str(PORT), "--port", str(OTHER_PORT)]
    for addr in lab.srv.addrs:
        argv += ["--addr", addr]
    server = lab.popen(lab.srv, argv, stdout=subprocess.PIPE)
    wait_for_line(server, "ready", timeout=10)
    return server


def run_probe(lab: Lab, where: str, *args: str) -> dict[str, Any]:
    done = lab.run(where, [sys.executable, PROBE, *args], timeout=15)
    assert done.returncode == 0, f"probe {args} in {where}: {done.stdout} {done.stderr}"
    return json.loads(done.stdout)


def namespaces_with(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def ip_json(*args: str) -> Any:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10, check=True).stdout
    return json.loads(out or "[]")


def in_lab_ranges(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip in net for net in LAB_NETS)


def route_in_lab(route: dict[str, Any]) -> bool:
    if route["dst"] != "default":
        dst = ipaddress.ip_network(route["dst"])
        if not any(dst.subnet_of(net) for net in LAB_NETS):
            return False
    return "gateway" not in route or in_lab_ranges(route["gateway"])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require_natlab()
    with Lab(HOMES) as lab:
        start_probe_server(lab)
        yield lab


# -- behaviour


@pytest.mark.parametrize("name", HOMES)
def test_mapping(lab: Lab, name: str) -> None:
    """One socket, three destinations: the same public ip:port for every destination behind a cone
    NAT, a new port per destination address and per port behind a symmetric one."""
    host = lab.host(name)
    srv_a, srv_b = lab.srv.addrs
    result = run_probe(lab, name, "map", "--server", f"{srv_a}:{PORT}", "--server", f"{srv_b}:{PORT}", "--server", f"{srv_a}:{OTHER_PORT}")
    seen = [tuple(s) for s in result["seen"]]
    assert {ip for ip, _ in seen} == {host.public_ip}
    ports = [port for _, port in seen]
    if host.nat is NatType.PUBLIC:
        assert host.addr == host.public_ip
        assert ports == [result["local"][1]] * 3
    elif host.nat is NatType.SYMMETRIC:
        assert ports[0] != ports[1], "other IP, same mapping"
        assert ports[0] != ports[2], "other port, same mapping"
    else:
        assert ports[0] == ports[1] == ports[2]


@pytest.mark.parametrize("name", HOMES)
def test_filtering(lab: Lab, name: str) -> None:
    """After the host sent to srv .2:PORT, unsolicited packets from .3:PORT (another IP) and from
    .2:OTHER_PORT (another port) to its mapped address pass only where nothing filters."""
    host = lab.host(name)
    srv_a, srv_b = lab.srv.addrs
    result = run_probe(
        lab, name, "filter", "--server", f"{srv_a}:{PORT}",
        "--poke", f"{srv_b}:{PORT}:other-ip", "--poke", f"{srv_a}:{OTHER_PORT}:other-port",
        "--wait", str(NO_ARRIVAL_WAIT),
    )
    assert result["seen"][0] == host.public_ip
    if host.nat in (NatType.PUBLIC, NatType.FULL_CONE):
        assert result["arrived"] == ["other-ip", "other-port"]
    else:
        assert result["arrived"] == []


def test_topology_and_names(lab: Lab) -> None:
    expected = {lab.inet_ns, lab.srv.ns} | {h.ns for h in lab.homes.values()} | {lab.router(n).ns for n in ("full", "prc", "sym")}
    assert set(lab.namespaces) == expected
    assert set(namespaces_with(lab.prefix)) == expected
    assert lab.host("prc").addr == "100.64.3.2" and lab.host("prc").public_ip == lab.router("prc").addr
    assert lab.srv.addrs == ("198.18.1.2", "198.18.1.3")
    with pytest.raises(KeyError):
        lab.router("pub")


def test_isolation(lab: Lab) -> None:
    """No link leaves the lab, every address and route is in its ranges, IPv6 is off, and the core
    router has nowhere to send a packet that is not for the lab."""
    for ns in lab.namespaces:
        names_by_nsid = {e["nsid"]: e["name"] for e in ip_json("-n", ns, "netns", "list-id")}
        for link in ip_json("-n", ns, "-d", "link", "show"):
            name = link["ifname"]
            if name == "lo":
                assert "UP" in link["flags"], f"{ns}: loopback down"
                continue
            assert name.startswith(lab.prefix + "-") and len(name) <= 15, name
            assert link.get("linkinfo", {}).get("info_kind") == "veth", f"{ns}: {name} is not a veth"
            assert names_by_nsid.get(link.get("link_netnsid")) in lab.namespaces, f"{ns}: {name}'s peer is outside the lab"
        for iface in ip_json("-n", ns, "addr", "show"):
            for a in iface.get("addr_info", []):
                assert a["family"] == "inet", f"{ns}: IPv6 address {a['local']} on {iface['ifname']}"
                assert iface["ifname"] == "lo" or in_lab_ranges(a["local"]), f"{ns}: {a['local']}"
        for route in ip_json("-n", ns, "route", "show"):
            assert route_in_lab(route), f"{ns}: {route}"
    assert all(r["dst"] != "default" for r in ip_json("-n", lab.inet_ns, "route", "show"))
    # route lookups only: no packet is sent
    for dst in ("203.0.113.1", lab.host("full").addr):
        lookup = lab.run(lab.inet_ns, ["ip", "route", "get", dst], timeout=10)
        assert lookup.returncode != 0 and "unreachable" in lookup.stderr, f"inet routes {dst}: {lookup.stdout}"
    # and from the root namespace no lab interface exists and no lab address is routed into the lab
    root_links = {link["ifname"] for link in ip_json("link", "show")}
    assert not {n for n in root_links if n.startswith(lab.prefix)}
    lab_ifaces = {link["ifname"] for ns in lab.namespaces for link in ip_json("-n", ns, "link", "show")} - {"lo"}
    for host in [lab.srv, *lab.homes.values()]:
        lookup = subprocess.run(["ip", "-j", "route", "get", host.addr], capture_output=True, text=True, timeout=10)
        if lookup.returncode == 0:
            assert json.loads(lookup.stdout)[0].get("dev") not in lab_ifaces


# -- lifetime


def test_close_stops_its_processes_and_removes_its_namespaces() -> None:
    require_natlab()
    lab = Lab({"x": "prc"}).build()
    assert len(namespaces_with(lab.prefix)) == 4
    sleeper = lab.popen("x", ["sleep", "60"])
    stubborn = lab.popen(
        "srv",
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    wait_for_line(stubborn, "ready", timeout=10)
    lab.close()
    assert sleeper.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    assert namespaces_with(lab.prefix) == []
    assert lab.namespaces == ()
    lab.close()
    with pytest.raises(LabError):
        lab.popen("x", ["true"])


def test_exception_inside_with_removes_namespaces() -> None:
    require_natlab()
    with pytest.raises(RuntimeError, match="boom"):
        with Lab({"x": "symmetric", "y": "public"}) as lab:
            assert len(namespaces_with(lab.prefix)) == 5
            raise RuntimeError("boom")
    assert namespaces_with(lab.prefix) == []


@pytest.mark.parametrize("error", [LabError("injected"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_build_failing_half_way_removes_what_it_made(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    require_natlab()
    real = Lab._build_home
    made_before_failure: list[str] = []

    def fail_on_second(self: Lab, home: Any) -> None:
        if home.index == 2:
            made_before_failure.extend(namespaces_with(self.prefix))
            raise error
        real(self, home)

    monkeypatch.setattr(Lab, "_build_home", fail_on_second)
    lab = Lab({"x": "full-cone", "y": "prc", "z": "sym"})
    with pytest.raises(type(error)):
        lab.build()
    assert len(made_before_failure) == 4
    assert namespaces_with(lab.prefix) == []


def test_two_labs_side_by_side() -> None:
    """Two labs at once (as two test runs would be) share no name and both work, with the same
    addresses in their own namespaces."""
    require_natlab()
    with Lab({"x": "prc"}) as one, Lab({"x": "prc"}) as two:
        assert one.prefix != two.prefix
        assert not set(one.namespaces) & set(two.namespaces)
        for lab in (one, two):
            start_probe_server(lab)
            result = run_probe(lab, "x", "map", "--server", f"{lab.srv.addr}:{PORT}")
            assert result["seen"][0][0] == lab.host("x").public_ip
    assert namespaces_with(one.prefix) == namespaces_with(two.prefix) == []


# -- no lab needed


def test_availability_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    ok, why = check_available()
    assert not ok and why


def test_homes_are_checked_before_anything_is_made() -> None:
    with pytest.raises(ValueError):
        Lab({"srv": "prc"})
    with pytest.raises(ValueError):
        Lab({"Bad_Name": "prc"})
    with pytest.raises(ValueError):
        Lab({"x": "carrier-grade"})
    lab = Lab({"a": "prc", "b": "sym", "c": "full", "d": "pub"})
    assert [h.nat for h in lab.homes.values()] == ["port-restricted", "symmetric", "full-cone", "public"]
    lab.close()
