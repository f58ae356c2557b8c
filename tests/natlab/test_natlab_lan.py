"""Two machines in one home (simulations/natlab): hosts `home` and `home-2` share a LAN behind one
port-restricted router that does not hairpin, each running real `overlay-node` processes. They
must find each other with mDNS (nat.lan) and connect directly at their LAN addresses: two nodes
that joined through the bootstrap (and dial each other by peer ID), and two that have no
bootstrap at all, in another network, which must ignore the first two. A hostile process on the
LAN announces nodes that do not exist, half of them at an address beyond the LAN: nothing of it
is dialed beyond the LAN, each refusal is counted, and the real neighbours stay connected.
Skips only where namespaces cannot be made (CI makes that a failure)."""

from __future__ import annotations

import sys
import time

import pytest

from simulations.natlab.matrix import Home, Matrix
from simulations.natlab.topology import SRV_ADDRS, NatType
from tests.natlab.natlab_fixtures import require_natlab

pytestmark = pytest.mark.timeout(400)

HOMES = {"home": Home(NatType.PORT_RESTRICTED)}
LAN_HOSTS = {"home-2": "home"}
PAIRS = [("home", "home-2", "direct-tcp")]
SOLO = {"home-solo": "home", "home-2-solo": "home-2"}  # node name -> the host it runs on
SOLO_PORT, SOLO_API, SOLO_NETWORK = 4002, "127.0.0.1:4081", "lanonly"
DEADLINE = 60.0
FAKES = 40


def until(condition, timeout: float = DEADLINE) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return round(time.monotonic() - start, 1)
        time.sleep(0.5)
    return None


def get(m: Matrix, name: str, path: str, host: str | None = None, api: str | None = None) -> dict | list:
    return m._agent(m.lab.host(host or name), name, "get", "--path", path, **({"api": api} if api else {}))


def peers_of(m: Matrix, name: str, **kw) -> dict[str, str]:
    """Peer ID -> path of `name`'s connections."""
    return {p["peer_id"]: p["path"] for p in get(m, name, "/v1/peers", **kw)}


def after(m: Matrix) -> dict:
    out: dict = {}
    # the neighbours that joined through srv: connected over the LAN by mDNS, before any dial of ours
    out["found_s"] = until(lambda: peers_of(m, "home").get(m.ids["home-2"]) == "direct-tcp")
    out["home_lan"] = get(m, "home", "/v1/status")["lan"]
    # two with no bootstrap, in another network
    for name, host in SOLO.items():
        m._node(m.lab.host(host), name, None, port=SOLO_PORT, api=SOLO_API, network=SOLO_NETWORK)
    for name, host in SOLO.items():
        m._wait_ready(m.lab.host(host), name, api=SOLO_API)
    solo = dict(host="home", api=SOLO_API)
    out["solo_found_s"] = until(lambda: peers_of(m, "home-solo", **solo).get(m.ids["home-2-solo"]) == "direct-tcp")
    out["solo_peers"] = peers_of(m, "home-solo", **solo)
    # the announcements of the first two nodes, heard and refused (their answers to our queries
    # may come after our neighbour's)
    out["solo_refused_other_s"] = until(lambda: get(m, "home-solo", "/v1/status", **solo)["lan"]["refused"]
                                        .get("other network", 0) >= 1, timeout=30)
    out["solo_lan"] = get(m, "home-solo", "/v1/status", **solo)["lan"]
    out["solo_connect"] = m._agent(m.lab.host("home"), "home-solo", "pair", "--peer", m.ids["home-2-solo"], api=SOLO_API)
    out["solo_find"] = get(m, "home-solo", f"/v1/find/{m.ids['home-2-solo']}", **solo)
    # a hostile announcer on the LAN
    before = dict(get(m, "home", "/v1/status")["lan"]["refused"])
    m.lab.popen("home-2", [sys.executable, "-m", "tests.natlab.lan_announcer", "--ip", m.lab.host("home-2").addr,
                           "--network", "natlab", "--count", str(FAKES), "--beyond", SRV_ADDRS[0]])
    beyond_refused = lambda: get(m, "home", "/v1/status")["lan"]["refused"].get("not on our LAN", 0)  # noqa: E731
    out["hostile_refused_s"] = until(lambda: beyond_refused() > before.get("not on our LAN", 0))
    until(lambda: get(m, "home", "/v1/status")["lan"]["dials"] >= FAKES // 2, timeout=30)
    out["hostile_lan"] = get(m, "home", "/v1/status")["lan"]
    out["after_hostile_path"] = peers_of(m, "home").get(m.ids["home-2"])
    out["ids"] = dict(m.ids)
    print(out)
    return out


@pytest.fixture(scope="module")
def lan():
    require_natlab()
    results = Matrix(trials=1, homes=HOMES, pairs=PAIRS, lan_hosts=LAN_HOSTS).run(after=after)
    return results


def test_neighbours_that_joined_through_a_bootstrap_connect_over_the_lan_and_dial_each_other_directly(lan):
    out = lan["after"]
    assert out["found_s"] is not None, f"home never connected to home-2 over the LAN: {out}"
    assert out["home_lan"]["state"] == "on" and out["home_lan"]["announced"] == ["/ip4/100.64.1.2/tcp/4001"], out
    [pair] = lan["pairs"]
    assert pair["connected"] and pair["first_path"] == "direct", pair
    assert pair["final_path"] == "direct-tcp", "the router does not hairpin: a direct TCP path is the LAN's"


def test_neighbours_without_a_bootstrap_find_each_other_and_only_their_own_network(lan):
    out = lan["after"]
    assert out["solo_found_s"] is not None, out
    assert set(out["solo_peers"]) == {out["ids"]["home-2-solo"]}, "nodes of the other network are not dialed"
    assert out["solo_lan"]["refused"].get("other network", 0) >= 1, out["solo_lan"]
    assert out["solo_connect"]["ok"] and out["solo_connect"]["path"] == "direct", out["solo_connect"]
    assert "/ip4/100.64.1.3/tcp/4002" in out["solo_find"].get("addrs", []), "found by DHT lookup without a bootstrap"


def test_a_hostile_lan_announcer_makes_no_dial_beyond_the_lan_and_is_counted(lan):
    out = lan["after"]
    assert out["hostile_refused_s"] is not None, f"announcements beyond the LAN were not refused: {out}"
    hostile = out["hostile_lan"]
    assert hostile["peers"] <= 64, hostile
    assert out["after_hostile_path"] == "direct-tcp", "the real neighbour stayed connected"
