"""The simulator against real processes: one 30-node workload on loopback, both ways.

Real side: 30 `overlay-node run` processes on 127.0.0.1 (all public, node 0 the bootstrap of
the others), then, once every node has joined and the network has settled (no node's record
count or routing table changed between two polls), 120 lookups: a seeded random node asks
`GET /v1/find/{peer_id}` for a random other node's record; the answer carries the lookup's hop
count (`LookupResult.hops`). Simulator side: the same network in `simulations.network` (the
same Kademlia core; 30 public nodes, one bootstrap, all arriving at once, 0.2 ms round trips,
no loss, no churn), dialling by peer ID at a rate that gives ~120 lookups after the warm-up,
over the seeds SIM_SEEDS (a steadier reference: ~580 lookups, ~2 s).

Both sides look the record up the same way, `get_value(key, quorum=1)`: a node that holds the
record itself answers at once with hops 0; any other lookup has hops >= 1 (the hop of the peer
that returned the value, the core's seeds being hop 1).

Tolerances, and what was measured (2-core machine, one core taken by another job meanwhile):

- success: 100% on both sides. Simulator: 100% (580 of 580). Real: 100% in all 7 settled runs.
  (Before the settle wait existed, one run whose lookups began as the last node joined got
  5 of 60 lookups answered 404, while ~30% of the DHT requests of the join were timing out.)
- lookups answered by the network (hops >= 1): mean hops within 0.25, max within 1.
  Simulator: always 1 hop. Real settled runs: always 1 hop (6-15 such lookups per run); of the
  unsettled runs, one had a single 2-hop lookup.
- all lookups: mean hops within 0.5, max hops within 1 (the issue's tolerance). Simulator:
  mean 0.28 pooled (0.26-0.36 per seed), max 1. Real settled: mean 0.05-0.13, max 1.

The overall means differ systematically (real lower by 0.16-0.23), and not because of the
lookups: a real node answers from its own store in 88-95% of the lookups against 72% in the
simulator, because a real record ends up on ~27 of the 30 nodes (26.0-27.2 records per node,
settled) and a simulated one on k+1 = 21 (21.2). Each real node publishes its record 7-8 times
while joining (once at start with an empty table, again at each doubling of its routing table,
and again after publishes that reached too few peers), while ~30% of the join's DHT requests
time out (TooSlowError at 5 s: 30 Python nodes on 2 cores); those publishes land on different
"closest 20" sets whose union covers nearly every node. A simulated node publishes once, after
its join lookup, in a network that converges in milliseconds. That gap is stated here rather
than folded into a tolerance; the comparison of hops over the network is the one that tests
the lookup itself.

Cost: ~100 CPU-seconds, nearly all of it the 30 nodes (imports ~1.1 s each, the join, then
~25 s of republishing until settled); ~100-110 s wall here with one core busy elsewhere.
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from overlay.node.apiauth import auth_headers, read_token
from simulations.network import Simulation
from simulations.scenario import parse
from tests.loopback.nodeproc import take_banner_line

CLI = str(Path(sys.executable).parent / "overlay-node")
NODES = 30
LOOKUPS = 120  # fast once settled (~1 s); enough that some go over the network, not only local
SEED = 11
SIM_SEEDS = range(1, 6)

SUCCESS = 1.0  # share of lookups that must find the record, both sides
NETWORK_MEAN_HOPS = 0.25  # lookups answered by the network (hops >= 1): mean hops may differ by this
MEAN_HOPS = 0.5  # all lookups: mean hops may differ by this
MAX_HOPS = 1  # max hops may differ by this (both comparisons)


class NodeProc:
    """One `overlay-node run` on loopback; stderr goes to a file in its data dir."""

    def __init__(self, data_dir: Path, bootstrap: str | None) -> None:
        data_dir.mkdir(parents=True)
        self.data_dir = data_dir
        self.stderr = open(data_dir / "stderr.log", "w+")
        argv = [CLI, "run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
                "--network", "simcheck", "--reachability", "public", "--no-port-mapping", "--no-mdns", "--log-level", "error"]
        if bootstrap:
            argv += ["--bootstrap", bootstrap]
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
                                      text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.popen.stdout], daemon=True).start()
        self.peer_id = ""
        self.addrs: list[str] = []
        self.api = ""

    def read_banner(self, deadline: float) -> None:
        """Peer ID, listen addresses and API URL, as the node prints them at start."""
        while not self.api:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.data_dir.name} exited {self.popen.returncode}: {self.errors()}")
            try:
                line = self.lines.get(timeout=max(0.01, min(0.5, deadline - time.monotonic()))).strip()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.data_dir.name} printed no banner in time: {self.errors()}") from None
                continue
            take_banner_line(self, line)

    def errors(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()[-2000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # SIGKILL to this PID
        self.popen.wait(timeout=10)
        self.stderr.close()


@pytest.fixture
def cluster():
    """Start nodes in a temporary root; on exit kill each (by PID) and remove the root.

    SIGKILL, not SIGTERM: graceful exit is test_cli_e2e's subject, and 30 nodes told to stop
    together spend ~11 CPU-seconds (~14 s here) reacting to each other's departure."""
    root = Path(tempfile.mkdtemp(prefix="simcheck-"))
    procs: list[NodeProc] = []

    def start(bootstrap: str | None = None) -> NodeProc:
        proc = NodeProc(root / f"n{len(procs)}", bootstrap)
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)


def get_json(proc: NodeProc, path: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{proc.api}{path}", headers=dict(auth_headers(read_token(proc.data_dir))))
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_until(condition, what: str, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def summary(found: list[bool], hops: list[int]) -> dict:
    """Success share; hops over all found lookups, and over those answered by the network."""
    network = [h for h in hops if h > 0]
    return {
        "lookups": len(found), "success": sum(found) / len(found),
        "mean_hops": sum(hops) / max(1, len(hops)), "max_hops": max(hops, default=0),
        "local_share": hops.count(0) / max(1, len(hops)), "network_lookups": len(network),
        "network_mean_hops": sum(network) / max(1, len(network)), "network_max_hops": max(network, default=0),
        "hist": {h: hops.count(h) for h in sorted(set(hops))},
    }


def run_real(start) -> dict:
    t0 = time.monotonic()
    first = start()
    first.read_banner(time.monotonic() + 30)
    others = [start(first.addrs[0]) for _ in range(NODES - 1)]  # all at once: the cheapest in CPU
    deadline = time.monotonic() + 90
    for p in others:
        p.read_banner(deadline)
    procs = [first, *others]
    pending = list(others)

    def joined() -> bool:  # "joined" stays set once set: ask only the nodes that have not joined yet
        pending[:] = [p for p in pending if not get_json(p, "/v1/status")[1]["joined"]]
        return not pending

    wait_until(joined, "every node to join", 120)
    t_joined = time.monotonic() - t0
    last: list = [None]

    def settled() -> bool:  # republishing has stopped: no record count or routing table changed
        now = [(s["records"], s["routing_table"]) for s in (get_json(p, "/v1/status")[1] for p in procs)]
        same, last[0] = now == last[0], now
        return same

    wait_until(settled, "the network to settle", 90, interval=2.0)
    t_settled = time.monotonic() - t0

    rng = random.Random(SEED)
    found, hops, failures = [], [], []
    for _ in range(LOOKUPS):
        src, dst = rng.sample(procs, 2)
        status, body = get_json(src, f"/v1/find/{dst.peer_id}")
        ok = status == 200 and body["peer_id"] == dst.peer_id and [f"{a}/p2p/{dst.peer_id}" for a in body["addrs"]] == dst.addrs
        found.append(ok)
        if ok:
            hops.append(body["hops"])
        else:
            failures.append((status, body))
    out = summary(found, hops)
    out.update(failures=failures[:5], records_per_node=sum(r for r, _ in last[0]) / NODES,
               joined_s=round(t_joined, 1), settled_s=round(t_settled, 1), lookups_s=round(time.monotonic() - t0 - t_settled, 1))
    return out


def run_sim() -> dict:
    found, hops, records = [], [], []
    for seed in SIM_SEEDS:
        scenario = parse({
            "network": {"nodes": NODES, "bootstrap": 1, "duration": 120.0, "join_window": 0.0, "warmup": 60.0,
                        "seed": seed, "regions": {"loopback": 1.0}, "nat": {"public": 1.0}},
            "latency": {"regions": ["loopback"], "rtt_ms": [[0.2]]},
            "links": {"loss": 0.0, "jitter": 0.1},
            "churn": {"per_hour": 0.0},
            "workload": {"dials_per_node_hour": 240.0},  # 30 nodes x 240/h over 60 s: ~120 dials
        })
        sim = Simulation(scenario)
        dials = sim.run().dials
        found += [d["found"] for d in dials]
        hops += [d["hops"] for d in dials if d["found"]]
        records.append(sum(len(n.core.records) for n in sim.nodes) / len(sim.nodes))
    out = summary(found, hops)
    out["records_per_node"] = sum(records) / len(records)
    return out


@pytest.mark.timeout(360)
def test_lookup_hops_and_success_agree_with_real_processes(cluster):
    sim = run_sim()
    real = run_real(cluster)
    print(f"\nreal {real}\nsim  {sim}")
    both = f"real {real}\nsim {sim}"
    assert sim["lookups"] >= len(SIM_SEEDS) * LOOKUPS * 0.8, both  # the workload ran: ~120 dials per seed
    assert real["success"] >= SUCCESS and sim["success"] >= SUCCESS, both
    assert real["network_lookups"] and sim["network_lookups"], f"every lookup answered locally: nothing to compare\n{both}"
    assert abs(real["network_mean_hops"] - sim["network_mean_hops"]) <= NETWORK_MEAN_HOPS, both
    assert abs(real["network_max_hops"] - sim["network_max_hops"]) <= MAX_HOPS, both
    assert abs(real["mean_hops"] - sim["mean_hops"]) <= MEAN_HOPS, both
    assert abs(real["max_hops"] - sim["max_hops"]) <= MAX_HOPS, both
