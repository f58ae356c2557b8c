"""DHT benchmark: N nodes on loopback, this node's DHT beside py-libp2p's KadDHT and `kademlia`.

    python benchmarks/dht.py [--nodes 50] [--lookups 200] [--impls ours,kaddht,kademlia] [--out FILE]

Each implementation runs in a child process of its own (memory figures do not mix; the asyncio
package gets its own loop) with all its nodes in that process on 127.0.0.1:
- join: from creating the first node until every node has bootstrapped through node 0 (and,
  where the implementation publishes something, published it);
- find: `--lookups` sequential lookups between random (source, target) pairs whose source does
  not hold the answer locally, so every lookup crosses the network. ours: the target's signed
  peer record (what `overlay-node find` does); kaddht: its FIND_NODE network lookup of the
  target's ID (`find_peer` would answer from the routing table); kademlia: `get` of the value
  the target stored under its own ID. Success = the right addresses came back within 10 s;
- dial: for ours and kaddht, a fresh connection to the found peer (ours: find + dial by peer
  ID, as `overlay-node ping` does);
- RSS per node: (RSS after the join - RSS before creating nodes) / N.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
LOOKUP_TIMEOUT = 10.0
DIALS = 30


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


def pick_pair(rng: random.Random, items: list, remote: Callable[[Any, Any], bool], tries: int = 1000) -> tuple[Any, Any]:
    """A random (source, target) pair whose answer the source does not hold locally, if any."""
    for _ in range(tries):
        a, b = rng.sample(items, 2)
        if remote(a, b):
            return a, b
    return a, b  # every node holds every answer (small networks): any pair


def quiet() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("libp2p", "kademlia", "multiaddr", "async_service", "rpcudp", "overlay"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


# ---- ours ---------------------------------------------------------------------------------------


def run_ours(nodes: int, lookups: int, seed: int) -> dict[str, Any]:
    import multiaddr
    import trio

    from overlay.config import Config
    from overlay.node import Node
    from overlay.records import record_key

    rng = random.Random(seed)
    loopback = (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0"),)
    result: dict[str, Any] = {}

    async def main() -> None:
        root = Path(tempfile.mkdtemp(prefix="dht-bench-"))
        base = rss_mb()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            first = Node(Config(data_dir=root / "0", listen=loopback, network="bench"))
            await nursery.start(first.run)
            boot = (multiaddr.Multiaddr(first.full_addrs()[0]),)
            ns = [first]
            for i in range(1, nodes):
                node = Node(Config(data_dir=root / str(i), listen=loopback, network="bench", bootstrap=boot))
                await nursery.start(node.run)
                ns.append(node)
            with trio.fail_after(600):
                for node in ns[1:]:
                    await node.joined.event.wait()
            result["join_s"] = round(time.perf_counter() - start, 2)
            result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)

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
                await src.connect(dst.peer_id)
                dials.append(time.perf_counter() - t)
            result["dial"] = summary(dials, len(dials), DIALS)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result


# ---- py-libp2p KadDHT -----------------------------------------------------------------------------


def run_kaddht(nodes: int, lookups: int, seed: int) -> dict[str, Any]:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.network.config import ConnectionConfig
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.tools.anyio_service import background_trio_service

    rng = random.Random(seed)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    result: dict[str, Any] = {}

    def make_host():
        kp = create_new_key_pair()
        return new_host(
            key_pair=kp,
            sec_opt={NOISE_ID: Noise(kp, noise_privkey=x25519_key_pair().private_key)},
            connection_config=ConnectionConfig(max_connections_per_peer=1),
        )

    async def main() -> None:
        base = rss_mb()
        start = time.perf_counter()
        hosts = [make_host() for _ in range(nodes)]
        dhts = [KadDHT(h, DHTMode.SERVER) for h in hosts]
        async with trio.open_nursery() as nursery:
            for h in hosts:
                await nursery.start(_run_host, h, listen)
            for d in dhts:
                await nursery.start(_run_service, d, background_trio_service)
            first = hosts[0]
            for h, d in zip(hosts[1:], dhts[1:]):
                await h.connect(PeerInfo(first.get_id(), first.get_addrs()))
                await d.add_peer(first.get_id(), skip_server_mode_check=True)
                await d.refresh_routing_table()
            result["join_s"] = round(time.perf_counter() - start, 2)
            result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)

            latencies, ok = [], 0
            for _ in range(lookups):
                i, j = rng.sample(range(nodes), 2)
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    try:
                        found = await dhts[i].peer_routing.find_closest_peers_network(hosts[j].get_id().to_bytes())
                        ok += hosts[j].get_id() in found and bool(hosts[i].get_peerstore().addrs(hosts[j].get_id()))
                    except Exception:
                        pass
                latencies.append(time.perf_counter() - t)
            result["find"] = summary(latencies, ok, lookups)

            dials = []
            for _ in range(DIALS):
                i, j = rng.sample(range(nodes), 2)
                src, dst = hosts[i], hosts[j]
                if src.get_network().get_connections(dst.get_id()):
                    await src.disconnect(dst.get_id())
                t = time.perf_counter()
                with trio.move_on_after(LOOKUP_TIMEOUT):
                    await src.connect(PeerInfo(dst.get_id(), dst.get_addrs()))
                    dials.append(time.perf_counter() - t)
            result["dial"] = summary(dials, len(dials), DIALS)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result


async def _run_host(host, listen, task_status) -> None:
    async with host.run(listen_addrs=listen):
        task_status.started()
        await _forever()


async def _run_service(service, runner, task_status) -> None:
    async with runner(service):
        task_status.started()
        await _forever()


async def _forever() -> None:
    import trio

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
        servers, ports = [], []
        for _ in range(nodes):
            s = Server()
            await s.listen(0, interface="127.0.0.1")
            servers.append(s)
            ports.append(s.transport.get_extra_info("sockname")[1])
        for s in servers[1:]:
            await s.bootstrap([("127.0.0.1", ports[0])])
        for s, port in zip(servers, ports):
            await s.set(f"node-{port}", f"127.0.0.1:{port}")
        result["join_s"] = round(time.perf_counter() - start, 2)
        result["rss_per_node_mb"] = round((rss_mb() - base) / nodes, 2)

        latencies, ok = [], 0
        for _ in range(lookups):
            i, j = pick_pair(rng, list(range(nodes)), lambda a, b: servers[a].storage.get(digest(f"node-{ports[b]}")) is None)
            t = time.perf_counter()
            try:
                value = await asyncio.wait_for(servers[i].get(f"node-{ports[j]}"), LOOKUP_TIMEOUT)
                ok += value == f"127.0.0.1:{ports[j]}"
            except Exception:
                pass
            latencies.append(time.perf_counter() - t)
        result["find"] = summary(latencies, ok, lookups)
        result["dial"] = None
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


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "cpu": model,
            "python": platform.python_version(), "kernel": platform.release()}


def run_child(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--impl", impl, "--nodes", str(args.nodes), "--lookups", str(args.lookups),
               "--seed", str(args.seed), "--json-out", out.name]
        started = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.timeout}s"}
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
            return {"error": last}
        data = json.loads(Path(out.name).read_text())
        data["wall_s"] = round(time.perf_counter() - started, 1)
        return data


def table(results: dict[str, dict[str, Any]], nodes: int) -> str:
    head = f"{'impl':<10}{'nodes':>6}{'join s':>9}{'find p50 ms':>13}{'find p99 ms':>13}{'success %':>11}{'dial p50 ms':>13}{'RSS/node MB':>13}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<10}{nodes:>6}  failed: {r['error']}")
            continue
        dial = r.get("dial") or {}
        lines.append(
            f"{name:<10}{nodes:>6}{r['join_s']:>9}{r['find']['p50_ms']:>13}{r['find']['p99_ms']:>13}"
            f"{r['find']['success_pct']:>11}{str(dial.get('p50_ms', 'n/a')):>13}{r['rss_per_node_mb']:>13}"
        )
    ours = results.get("ours", {})
    if "find" in ours:
        for name, r in results.items():
            if name != "ours" and "find" in r and r["find"]["p50_ms"]:
                lines.append(f"find p50 of {name} / ours: {r['find']['p50_ms'] / ours['find']['p50_ms']:.1f}x")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--lookups", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--impls", default="ours,kaddht,kademlia")
    p.add_argument("--timeout", type=float, default=1200.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        quiet()
        sys.path.insert(0, str(ROOT))
        Path(args.json_out).write_text(json.dumps(IMPLS[args.impl](args.nodes, args.lookups, args.seed)))
        return
    results = {}
    for name in args.impls.split(","):
        print(f"running {name} ({args.nodes} nodes, {args.lookups} lookups)...", file=sys.stderr, flush=True)
        results[name] = run_child(name, args)
    print(table(results, args.nodes))
    out = args.out or ROOT / "benchmarks" / "results" / f"dht-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "nodes": args.nodes, "lookups": args.lookups, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
