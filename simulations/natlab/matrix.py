"""The NAT lab's connection matrix: real `overlay-node run` processes behind real NATs.

    overlay-node natlab [--json] [--trials 3] [--out FILE] [--portmap]

Builds the lab (`topology.Lab`): `srv` runs the bootstrap (a public node, so also a signalling
node and STUN server, on two addresses), and eight homes, one per router type on an A side and
on a B side, each run a node that joins through `srv` and finds out by dial-back whether it is
reachable. Then, for each of the 16 ordered pairs, A dials B by peer ID `trials` times (closing
any connection first) and records: connected, first path, time to first stream (lookup, dial
and one ping round trip on a new stream); after the first trial it waits up to `upgrade_wait`
seconds for a direct path and records the final path and the time to it. It also asks every
node's netcheck which NAT type it sees.

With --portmap, the rows of port mapping instead (`portmap_matrix`): port-restricted routers that
run a real IGD (miniupnpd, `igd`) speaking UPnP-IGD v2, UPnP-IGD v1, PCP or NAT-PMP, each dialed
from a symmetric and from a port-restricted home. Without the mapping, sym -> prc has no direct
path; with it, every row ends on direct TCP to the mapped port.

Prints a table, returns (and writes with --out/--json) the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.natlab import igd
from simulations.natlab.topology import SRV_ADDRS, Lab, LabHost, NatType

TYPES = {"pub": NatType.PUBLIC, "full": NatType.FULL_CONE, "prc": NatType.PORT_RESTRICTED, "sym": NatType.SYMMETRIC}
NO_DIRECT_PATH = {("prc", "sym"), ("sym", "prc"), ("sym", "sym")}
PORT = 4001
API = "127.0.0.1:4080"
NETWORK = "natlab"
START_TIMEOUT = 90.0


def expected_path(a: str, b: str) -> str:
    return "relayed" if (a, b) in NO_DIRECT_PATH else "direct"


@dataclass(frozen=True)
class Home:
    """A home of the matrix: its router's NAT, the IGD on that router (None: no port mapping
    offered) and the port-mapping protocols its node tries (None: the default order)."""

    nat: NatType
    gateway: igd.Gateway | None = None
    protocols: tuple[str, ...] | None = None


NAT_HOMES = {f"{side}-{short}": Home(nat) for side in "ab" for short, nat in TYPES.items()}
NAT_PAIRS = [(f"a-{a}", f"b-{b}", expected_path(a, b)) for a in TYPES for b in TYPES]

PORTMAP_HOMES = {
    "a-sym": Home(NatType.SYMMETRIC), "a-prc": Home(NatType.PORT_RESTRICTED),
    "b-upnp2": Home(NatType.PORT_RESTRICTED, igd.Gateway(upnp=True, natpmp_pcp=False, igd_version=2, secure=False)),
    "b-upnp1": Home(NatType.PORT_RESTRICTED, igd.Gateway(upnp=True, natpmp_pcp=False, igd_version=1, secure=False)),
    "b-pcp": Home(NatType.PORT_RESTRICTED, igd.Gateway(upnp=False, natpmp_pcp=True)),
    "b-natpmp": Home(NatType.PORT_RESTRICTED, igd.Gateway(upnp=False, natpmp_pcp=True), protocols=("nat-pmp",)),
}
PORTMAP_PAIRS = [(a, b, "direct-tcp") for b in ("b-upnp2", "b-upnp1", "b-pcp", "b-natpmp") for a in ("a-sym", "a-prc")]

# IPv6 rows (the lab with ipv6=True): the same routers on IPv4, stateful firewalls on IPv6. Even
# sym -> sym, relayed on IPv4 alone, has a direct path: WebRTC between the homes' IPv6 addresses.
IPV6_HOMES = {f"{side}-{short}": Home(TYPES[short]) for side in "ab" for short in ("prc", "sym")}
IPV6_PAIRS = [(f"a-{a}", f"b-{b}", "direct") for a in ("prc", "sym") for b in ("prc", "sym")]


class Matrix:
    def __init__(self, trials: int = 3, upgrade_wait: float = 12.0, log=print,
                 homes: dict[str, Home] | None = None, pairs: list[tuple[str, str, str]] | None = None,
                 lan_hosts: dict[str, str] | None = None, ipv6: bool = False) -> None:
        """`lan_hosts`: further hosts (name -> the home whose LAN they share), each running a node
        too; `ipv6`: the lab carries IPv6 as well (home routers are stateful firewalls there) and
        every node listens on both families."""
        self.trials = trials
        self.upgrade_wait = upgrade_wait
        self.log = log
        self.bin = Path(sys.executable).parent / "overlay-node"
        self.root = Path(tempfile.mkdtemp(prefix="natlab-"))
        self.homes = homes or NAT_HOMES
        self.pairs = pairs or NAT_PAIRS
        self.lan_hosts = lan_hosts or {}
        self.ipv6 = ipv6
        self.lab = Lab(homes={name: home.nat for name, home in self.homes.items()}, lan_hosts=self.lan_hosts, ipv6=ipv6)
        self.names = [*self.homes, *self.lan_hosts]  # every node but srv's
        self.ids: dict[str, str] = {}
        self.nodes: dict[str, subprocess.Popen] = {}

    def run(self, after=None) -> dict[str, Any]:
        """Build, measure, tear down; `after(matrix)` runs before the teardown (a test's own checks)."""
        with self.lab:
            started = time.monotonic()
            self._start_gateways()
            self._start_nodes()
            setup = time.monotonic() - started
            netcheck = {name: self._agent(self.lab.host(name), name, "get", "--path", "/v1/netcheck", "--timeout", "30")
                        for name in self.names}
            status = {name: self._agent(self.lab.host(name), name, "get", "--path", "/v1/status") for name in self.names}
            pairs = []
            for a, b, expected in self.pairs:
                pairs.append(self._pair(a, b, expected))
                self.log(_row(pairs[-1]))
            results = {"setup_s": round(setup, 1), "pairs": pairs, "netcheck": netcheck, "status": status,
                       "summary": summarize(pairs)}
            if after is not None:
                results["after"] = after(self)
            return results

    # ---- nodes -------------------------------------------------------------------------------

    def _start_gateways(self) -> None:
        for name, home in self.homes.items():
            if home.gateway is not None:
                igd.start(self.lab, name, home.gateway, self.root / f"{name}-igd")

    def _node(self, where: LabHost | str, name: str, bootstrap: str | None, port: int = PORT, api: str = API,
              network: str = NETWORK) -> subprocess.Popen:
        data = self.root / name
        ident = subprocess.run([str(self.bin), "id", "--data-dir", str(data)], capture_output=True, text=True, check=True)
        self.ids[name] = ident.stdout.strip()
        argv = [str(self.bin), "run", "--data-dir", str(data), "--listen", f"/ip4/0.0.0.0/tcp/{port}",
                *(["--listen", f"/ip6/::/tcp/{port}"] if self.ipv6 else []),
                "--api", api, "--network", network, "--log-level", "info"]
        if bootstrap:
            argv += ["--bootstrap", bootstrap]
        home = self.homes.get(name)
        if home is not None and home.protocols is not None:
            config = self.root / f"{name}.toml"
            config.write_text(f"port_mapping_protocols = {json.dumps(list(home.protocols))}\n")
            argv += ["--config", str(config)]
        log = open(self.root / f"{name}.log", "wb")
        self.nodes[name] = self.lab.popen(where, argv, stdout=log, stderr=subprocess.STDOUT)
        return self.nodes[name]

    def _start_nodes(self) -> None:
        self._node("srv", "srv", None)
        self._wait_ready(self.lab.srv, "srv")
        bootstrap = f"/ip4/{SRV_ADDRS[0]}/tcp/{PORT}/p2p/{self.ids['srv']}"
        for name in self.names:
            self._node(self.lab.host(name), name, bootstrap)
        for name in self.names:
            home = self.homes.get(name)
            self._wait_ready(self.lab.host(name), name, home is not None and home.gateway is not None)

    def _wait_ready(self, where: LabHost, name: str, mapped: bool = False, api: str = API) -> None:
        """Until the node knows its reachability; one behind a mapping router until that is public."""
        result = self._agent(where, name, "ready", "--timeout", str(START_TIMEOUT), *(["--public"] if mapped else []), api=api)
        if not result.get("ready"):
            tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"node {name} did not get ready: {json.dumps(result)[:500]}\n{tail}")

    def _agent(self, where: LabHost, name: str, *args: str, api: str = API) -> dict[str, Any]:
        """The agent in `where`, speaking to node `name` (its token is in the node's data dir)."""
        argv = [sys.executable, "-m", "simulations.natlab.agent", *args, "--api", api, "--data-dir", str(self.root / name)]
        done = self.lab.run(where, argv, timeout=START_TIMEOUT + 30)
        if done.returncode != 0:
            return {"ok": False, "error": done.stderr.strip()[-500:]}
        return json.loads(done.stdout)

    # ---- pairs -------------------------------------------------------------------------------

    def _pair(self, name: str, target_home: str, expected: str) -> dict[str, Any]:
        target = self.ids[target_home]
        host = self.lab.host(name)
        trials = []
        for i in range(self.trials):
            wait = self.upgrade_wait if i == 0 else 0.0
            trials.append(self._agent(host, name, "pair", "--peer", target, "--wait", str(wait)))
        first = trials[0]
        ok = [t for t in trials if t.get("ok")]
        dial = first.get("dial") or {}
        return {
            "a": name.removeprefix("a-"), "b": target_home.removeprefix("b-"),
            "connected": len(ok) == len(trials),
            "first_path": first.get("path"),
            "final_path": first.get("final_path"),
            "expected": expected,
            "first_stream_ms": [t["first_stream_ms"] for t in ok],
            "median_first_stream_ms": statistics.median(t["first_stream_ms"] for t in ok) if ok else None,
            "direct_ms": dial.get("direct_ms"),
            "errors": [t.get("error") for t in trials if not t.get("ok")],
            "trials": trials,
        }


def summarize(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    direct = [p for p in pairs if (p["final_path"] or "").startswith("direct")]
    relayed = [p for p in pairs if p["final_path"] == "relayed"]
    as_expected = [p for p in pairs if p["connected"] and (p["final_path"] or "").startswith(p["expected"])]
    medians = [p["median_first_stream_ms"] for p in pairs if p["median_first_stream_ms"] is not None]
    return {
        "connected": sum(p["connected"] for p in pairs),
        "direct": len(direct),
        "relayed": len(relayed),
        "as_expected": len(as_expected),
        "max_median_first_stream_ms": max(medians, default=None),
    }


def _row(p: dict[str, Any]) -> str:
    direct = "-" if p["direct_ms"] is None else f"{p['direct_ms']:.0f}"
    median = "-" if p["median_first_stream_ms"] is None else f"{p['median_first_stream_ms']:.0f}"
    return (f"{p['a']:>5} -> {p['b']:<6} {'yes' if p['connected'] else 'NO':>9} {p['final_path'] or '-':>11} "
            f"{p['expected']:>8} {median:>15} {direct:>10}  {'; '.join(map(str, p['errors']))[:60]}")


HEADER = f"{'pair':>15} {'connected':>9} {'path':>11} {'expected':>8} {'first stream ms':>15} {'direct ms':>10}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="overlay-node natlab", description="Connection matrix in the NAT lab")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--portmap", action="store_true", help="the port-mapping rows (routers running miniupnpd)")
    p.add_argument("--ipv6", action="store_true", help="the IPv6 rows (IPv6 homes behind stateful firewalls)")
    args = p.parse_args(argv)
    ok, why = Lab.available()
    if not ok:
        print(f"overlay-node natlab: cannot build the lab here: {why}", file=sys.stderr)
        return 2
    quiet = args.json
    if not quiet:
        print(HEADER)
    rows: dict[str, Any] = {"homes": PORTMAP_HOMES, "pairs": PORTMAP_PAIRS} if args.portmap else {}
    if args.ipv6:
        rows = {"homes": IPV6_HOMES, "pairs": IPV6_PAIRS, "ipv6": True}
    results = Matrix(trials=args.trials, log=(lambda line: None) if quiet else print, **rows).run()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if quiet:
        print(json.dumps(results, indent=2))
    else:
        s, n = results["summary"], len(results["pairs"])
        print(f"\nconnected {s['connected']}/{n}, direct {s['direct']}, relayed {s['relayed']}, "
              f"as expected {s['as_expected']}/{n}, worst median first stream {s['max_median_first_stream_ms']} ms")
        for name, check in results["netcheck"].items():
            print(f"netcheck {name}: {check.get('nat_type', check)}")
        for name, check in results["netcheck"].items():
            if (mapping := check.get("port_mapping")) and mapping.get("state") == "mapped":
                print(f"port mapping {name}: {mapping['protocol']} {mapping['external']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
