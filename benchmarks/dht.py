"""DHT benchmark: N nodes on loopback for each implementation, printed side by side.

    python benchmarks/dht.py [--nodes 50] [--lookups 200] [--impls ours,kaddht,kademlia]
                             [--seed N] [--timeout 900] [--out FILE]

Not part of the test suite. Each implementation runs in a child process of its own
(`dht.py --impl NAME --nodes N --lookups M --seed S --json-out FILE`), so memory figures do not
mix and the asyncio package gets a loop of its own; all of an implementation's nodes share that
process and 127.0.0.1. Implementations (`IMPLS`):
- ours: this project's node (`overlay.node.node.Node`);
- kaddht: py-libp2p's KadDHT in server mode over TCP + Noise + Yamux, one connection per peer;
- kademlia: the `kademlia` package (asyncio, UDP).

Figures per implementation:
- join s: from creating the first node until the bootstrap through node 0 has returned on every
  node, one node after another for ours and kaddht (all 50 at once in one process measures the
  CPU overload of 50 simultaneous joins, not the protocol; kaddht's joins then overrun node 0,
  which resets inbound streams past 12, and return with near-empty tables). ours: `joined` and
  the join's lookups done, and at the end every node's reachability known and no DHT query in
  flight anywhere (the network settled); kaddht: connect to node 0, add it to the routing table, refresh the
  table; kademlia: `bootstrap`, then each node `set`s its own address under its ID, all at once.
  The JSON has the routing table sizes after the join;
- find p50/p99 ms, success %: `--lookups` sequential lookups between random (source, target)
  pairs that cross the network. ours and kademlia pick pairs whose source does not hold the
  answer; kaddht first drops the target from the source's routing table and peerstore, so
  `find_peer` has to ask the network. Success = the target's address came back within 10 s;
  a lookup that times out counts at 10 s;
- dial p50 ms: a fresh connection (disconnected first if connected). kaddht: to each peer its
  lookups found; ours: by peer ID to 30 random peers, as `overlay-node ping` does; kademlia
  has no connections (n/a);
- RSS/node MB: (VmRSS after the join - VmRSS just before creating the nodes) / N.
Prints a table and each baseline's find p50 against ours, and writes JSON with machine info to
benchmarks/results/dht-<date>-<time>.json (or --out).
"""

from __future__ import annotations

import argparse
import atexit
import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
LOOKUP_TIMEOUT = 10.0
JOIN_TIMEOUT = 600.0
TEARDOWN_TIMEOUT = 30.0
DIALS = 30
_json_out: Path | None = None


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def summary(latencies: list[float], ok: int, total: int) -> dict[str, Any]:
    xs = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 2) if xs else None

    return {"p50_ms": pct(0.5), "p99_ms": pct(0.99), "success_pct": round(100 * ok / total, 1) if total else None}


def sizes(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "mean": round(statistics.mean(values), 1), "max": max(values)}


def pick_pair(rng: random.Random, items: list, remote: Callable[[Any, Any], bool], tries: int = 1000) -> tuple[Any, Any]:
    """A random (source, target) pair whose answer the source does not hold locally, if any."""
    for _ in range(tries):
        a, b = rng.sample(items, 2)
        if remote(a, b):
            return a, b
    return a, b  # every node holds every answer (small networks): any pair


def quiet() -> None:
    logging.disable(logging.WARNING)


def write_json(result: dict[str, Any]) -> None:
    if _json_out is not None:
        _json_out.write_text(json.dumps(result))


def measured(result: dict[str, Any]) -> None:
    """Call once the figures are in: should shutting the nodes down hang, they are still reported."""

    def give_up() -> None:
        result["teardown"] = f"hung; process ended after {TEARDOWN_TIMEOUT:.0f}s"
        write_json(result)
        sys.stderr.flush()
        os._exit(0)

    timer = threading.Timer(TEARDOWN_TIMEOUT, give_up)
    timer.daemon = True
    timer.start()


# ---- ours ---------------------------------------------------------------------------------------


def run_ours(nodes: int, lookups: int, seed: int) -> dict[str, Any]:
    import multiaddr
    import trio
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from overlay.node.config import Config
    from overlay.node.node import Node
    from overlay.core.records import record_key

    rng = random.Random(seed)
    loopback = (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"),)
    result: dict[str, Any] = {}

    async def main() -> None:
        root = Path(tempfile.mkdtemp(prefix="dht-bench-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        base = rss_mb()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            keys = [Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(nodes)]  # same seed, same network
            first = Node(Config(data_dir=root / "0", listen=loopback, network="bench"), key=keys[0])
            await nursery.start(first.run)
            boot = (multiaddr.Multiaddr(first.full_addrs()[0]),)
            ns = [first]
            with trio.fail_after(JOIN_TIMEOUT):
                for i in range(1, nodes):
                    node = Node(Config(data_dir=root / str(i), listen=loopback, network="bench", bootstrap=boot), key=keys[i])
                    await nursery.start(node.run)
                    ns.append(node)
                    await node.joined.wait()
                    while node.core._queries:  # the join's refresh lookups too
                        await trio.sleep(0.01)
                # settled: every node knows it is reachable, and has republished and announced
                # itself accordingly (lookups measured meanwhile would compete with that work)
                while any(n.reachability == "unknown" for n in ns[1:]) or any(n.core._queries for n in ns):
                    await trio.sleep(0.05)
            result["join_s"] = round(time.perf_counter() - start, 2)
            result["join_order"] = "one node after another"
            result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)
            result["routing_table"] = sizes([len(node.core.table) for node in ns])

            latencies, ok = [], 0
            for _ in range(lookups):
                src, dst = pick_pair(rng, ns, lambda a, b: a.core.records.get(record_key(b.peer_id_bytes), trio.current_time()) is None)
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    try:
                        record = await src.find(dst.peer_id)
                        ok += record.addrs == tuple(a.to_bytes() for a in dst.listen_addrs())
                    except Exception:
                        pass
                latencies.append(time.perf_counter() - t)
            result["find"] = summary(latencies, ok, lookups)

            dials = []
            for _ in range(DIALS):
                src, dst = rng.sample(ns, 2)
                if src.dialer.connected(dst.peer_id):
                    await src.host.disconnect(dst.peer_id)
                    with trio.move_on_after(2):
                        while src.dialer.connected(dst.peer_id):
                            await trio.sleep(0.005)
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    try:
                        await src.connect(dst.peer_id)
                        dials.append(time.perf_counter() - t)
                    except Exception:
                        pass
            result["dial"] = summary(dials, len(dials), DIALS)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result


# ---- py-libp2p KadDHT -----------------------------------------------------------------------------


def run_kaddht(nodes: int, lookups: int, seed: int) -> dict[str, Any]:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.abc import IHost
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.tools.anyio_service import background_trio_service

    rng = random.Random(seed)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    result: dict[str, Any] = {}

    def make_host() -> IHost:
        kp = create_new_key_pair()
        return new_host(
            key_pair=kp,
            sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519_key_pair().private_key)},
            muxer_opt={YAMUX_ID: Yamux},
            connection_config=ConnectionConfig(max_connections_per_peer=1),
        )

    async def join(host: IHost, dht: KadDHT, first: PeerInfo) -> None:
        await host.connect(first)
        await dht.add_peer(first.peer_id, skip_server_mode_check=True)
        await dht.refresh_routing_table()

    async def drop_connection(src: IHost, peer: Any) -> None:
        if src.get_network().get_connections(peer):
            await src.disconnect(peer)
            with trio.move_on_after(2):
                while src.get_network().get_connections(peer):
                    await trio.sleep(0.005)

    async def main() -> None:
        base = rss_mb()
        start = time.perf_counter()
        hosts = [make_host() for _ in range(nodes)]
        dhts = [KadDHT(h, DHTMode.SERVER) for h in hosts]
        async with trio.open_nursery() as nursery:
            for h in hosts:
                await nursery.start(_serve_host, h, listen)
            for d in dhts:
                await nursery.start(_serve_service, d, background_trio_service)
            first = PeerInfo(hosts[0].get_id(), hosts[0].get_transport_addrs())
            with trio.fail_after(JOIN_TIMEOUT):
                for h, d in zip(hosts[1:], dhts[1:]):
                    await join(h, d, first)
            result["join_s"] = round(time.perf_counter() - start, 2)
            result["join_order"] = "one node after another"
            result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)
            result["routing_table"] = sizes([d.get_routing_table_size() for d in dhts])

            latencies, dials, found, tried = [], [], 0, 0
            for _ in range(lookups):
                i, j = rng.sample(range(nodes), 2)
                src, dht, target = hosts[i], dhts[i], hosts[j].get_id()
                want = {str(a) for a in hosts[j].get_transport_addrs()}
                dht.routing_table.remove_peer(target)
                src.get_peerstore().clear_addrs(target)
                info = None
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    try:
                        info = await dht.find_peer(target)
                    except Exception:
                        pass
                latencies.append(time.perf_counter() - t)
                if info is None or not want & {str(a).split("/p2p/")[0] for a in info.addrs}:
                    continue
                found += 1
                await drop_connection(src, target)
                tried += 1
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    try:
                        await src.connect(info)
                        dials.append(time.perf_counter() - t)
                    except Exception:
                        pass
            result["find"] = summary(latencies, found, lookups)
            result["dial"] = summary(dials, len(dials), tried)
            measured(result)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result


async def _serve_host(host: Any, listen: list[Any], task_status: Any) -> None:
    import trio

    async with host.run(listen_addrs=listen):
        task_status.started()
        await trio.sleep_forever()


async def _serve_service(service: Any, runner: Callable[[Any], Any], task_status: Any) -> None:
    import trio

    async with runner(service):
        task_status.started()
        await trio.sleep_forever()


# ---- the `kademlia` package (asyncio, UDP) -----------------------------------------------------------


def run_kademlia(nodes: int, lookups: int, seed: int) -> dict[str, Any]:
    from kademlia.network import Server
    from kademlia.utils import digest

    rng = random.Random(seed)
    result: dict[str, Any] = {}

    async def main() -> None:
        base = rss_mb()
        start = time.perf_counter()
        servers: list[Server] = []
        for _ in range(nodes):
            s = Server()
            await s.listen(0, interface="127.0.0.1")
            servers.append(s)
        addrs = [f"127.0.0.1:{s.transport.get_extra_info('sockname')[1]}" for s in servers]
        keys = [s.node.id.hex() for s in servers]
        first = ("127.0.0.1", servers[0].transport.get_extra_info("sockname")[1])
        await asyncio.wait_for(asyncio.gather(*(s.bootstrap([first]) for s in servers[1:])), JOIN_TIMEOUT)
        stored = await asyncio.wait_for(asyncio.gather(*(s.set(k, a) for s, k, a in zip(servers, keys, addrs))), JOIN_TIMEOUT)
        result["join_s"] = round(time.perf_counter() - start, 2)
        result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)
        result["routing_table"] = sizes([sum(len(b) for b in s.protocol.router.buckets) for s in servers])
        result["published"] = sum(bool(x) for x in stored)
        result["join_order"] = "all at once"

        def remote(a: int, b: int) -> bool:
            return servers[a].storage.get(digest(keys[b])) is None

        latencies, found, local = [], 0, 0
        for _ in range(lookups):
            i, j = pick_pair(rng, list(range(nodes)), remote)
            local += not remote(i, j)
            t = time.perf_counter()
            try:
                found += await asyncio.wait_for(servers[i].get(keys[j]), LOOKUP_TIMEOUT) == addrs[j]
            except Exception:
                pass
            latencies.append(time.perf_counter() - t)
        result["find"] = summary(latencies, found, lookups)
        result["find_answered_locally"] = local
        result["dial"] = None
        measured(result)
        for s in servers:
            s.stop()

    asyncio.run(main())
    return result


IMPLS: dict[str, Callable[[int, int, int], dict[str, Any]]] = {
    "ours": run_ours,
    "kaddht": run_kaddht,
    "kademlia": run_kademlia,
}


# ---- parent ---------------------------------------------------------------------------------------




def failure(stderr: str, code: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if "Error" in line or "Exception" in line]
    return (lines or [f"exit {code}"])[-1]


def run_child(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dht-bench-") as tmp:
        out = Path(tmp) / f"{impl}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--impl", impl, "--nodes", str(args.nodes),
               "--lookups", str(args.lookups), "--seed", str(args.seed), "--json-out", str(out)]
        started = time.perf_counter()
        code: int | None = None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            code, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        wall = round(time.perf_counter() - started, 1)
        if out.exists():
            data = json.loads(out.read_text())
            if code is None:
                data["teardown"] = f"killed at the {args.timeout:.0f}s timeout after reporting"
        elif code is None:
            data = {"error": f"timed out after {args.timeout:.0f}s"}
        else:
            data = {"error": failure(stderr, code)}
        data["wall_s"] = wall
        return data


def cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def table(results: dict[str, dict[str, Any]], nodes: int) -> str:
    cols = ["impl", "nodes", "join s", "find p50 ms", "find p99 ms", "success %", "dial p50 ms", "RSS/node MB"]
    widths = [10, 6, 9, 13, 13, 11, 13, 13]
    lines = ["".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(cols, widths)))]
    lines.append("-" * sum(widths))
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<10}{nodes:>6}   skipped: {r['error']}")
            continue
        find, dial = r["find"], r.get("dial") or {}
        row = [name, nodes, r["join_s"], find["p50_ms"], find["p99_ms"], find["success_pct"], dial.get("p50_ms"),
               r["rss_per_node_mb"]]
        lines.append("".join(cell(v).ljust(w) if k == 0 else cell(v).rjust(w) for k, (v, w) in enumerate(zip(row, widths))))
    for name, r in results.items():
        if r.get("find_answered_locally"):
            lines.append(f"{name}: {r['find_answered_locally']} lookups answered from the source's own store "
                         "(no pair had to cross the network)")
    ours = (results.get("ours") or {}).get("find", {}).get("p50_ms")
    if ours:
        for name, r in results.items():
            p50 = (r.get("find") or {}).get("p50_ms")
            if name != "ours" and p50 is not None:
                lines.append(f"find p50 {name} / ours: {p50 / ours:.2f}x")
    return "\n".join(lines)


def main() -> None:
    global _json_out
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per implementation")
    p.add_argument("--out", type=Path)
    p.add_argument("--impl", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    p.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.nodes < 2:
        p.error("--nodes must be at least 2")
    if args.impl:
        quiet()
        sys.path.insert(0, str(ROOT))
        _json_out = args.json_out
        write_json(IMPLS[args.impl](args.nodes, args.lookups, args.seed))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    unknown = [n for n in args.impls.split(",") if n not in IMPLS]
    if unknown:
        p.error(f"unknown implementation(s) {', '.join(unknown)}; known: {', '.join(IMPLS)}")
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine

    info = machine()
    results: dict[str, dict[str, Any]] = {}
    for name in args.impls.split(","):
        print(f"{name}: {args.nodes} nodes, {args.lookups} lookups ...", file=sys.stderr, flush=True)
        results[name] = run_child(name, args)
        print(f"{name}: done in {results[name]['wall_s']}s", file=sys.stderr, flush=True)
    print(table(results, args.nodes))
    out = args.out or ROOT / "benchmarks" / "results" / f"dht-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "nodes": args.nodes,
              "lookups": args.lookups, "seed": args.seed, "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
