"""Floods against one node, as the attack tests try them (the hostile peers of
tests/loopback/hostile.py: needs `pip install -e '.[test]'`) but held longer and measured, each
once with the shipped limits and once with them lifted (the baseline: the node as it was before
its resource manager and relay budget).

    python benchmarks/floods.py [--seconds 20] [--floods silent-tcp-ip,...,relay] [--out FILE]

Connection floods, against one `overlay-node run --dht-mode server` process on loopback:
- silent-tcp-ip: 300 TCP connections from 127.0.1.2 that send nothing, at most 100 new a second,
  each opened again once the node drops it;
- silent-tcp-net: the same from 60 addresses of 127.0.1.0/24;
- silent-ws-ip: the first against the WebSocket listener;
- idle-streams: 16 identities (127.0.1.2-17), each opening 250 DHT streams on its connection and
  sending nothing on them.
While one runs, a fresh legitimate peer (its own identity, its own /24) dials in every half second
and asks a FIND_NODE, within 10 s. Reported: the node's RSS before and at the end, its CPU (share
of one core) idle before and during the flood, what it held at the end, legitimate dials that
succeeded, their p50 and max time.

relay: in this process, a relay node, a node behind NAT registered with it and a caller; the
caller writes 64 MiB to the hidden node over a first connection's circuit. Reported: bytes that
arrived, seconds, and this process's CPU seconds (the relay, both ends and the writer together).

Prints a table, writes JSON (default benchmarks/results/floods-<date>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.channels import cpu_seconds  # noqa: E402
from benchmarks.common import machine, write_result  # noqa: E402
from nat.circuits import RelayBudget, RelayLimits  # noqa: E402
from signaling.messages import MAX_LIMIT  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.loopback.hostile import Peer, SilentFlood, legitimate_dials, rss_mib, send, sink, target  # noqa: E402
from tests.loopback.nodeproc import Proc  # noqa: E402
from tests.loopback.nodes import cluster  # noqa: E402

LIFTED = """[resource_limits]
exempt = ["127.0.0.0/8"]
pending = 100000
handshake_timeout = 60.0
streams = 1000000
streams_per_connection = 100000
streams_per_protocol = 100000
"""
ONE_IP = ["127.0.1.2"]
ONE_NET = [f"127.0.1.{i}" for i in range(2, 62)]
IDLE_IDENTITIES, IDLE_STREAMS = 16, 250
RELAY_BYTES = 64 * 2**20
NO_RELAY_LIMITS = RelayLimits(per_peer=10**6, per_ip=10**6, total=10**6, circuit_bytes=MAX_LIMIT,
                              circuit_seconds=1e9, persistent_rate=MAX_LIMIT, bandwidth=MAX_LIMIT)


@contextlib.asynccontextmanager
async def idle_streams(node: Proc):
    """16 identities, each opening IDLE_STREAMS DHT streams and holding them silent."""
    peers = [Peer(source=f"127.0.1.{2 + i}") for i in range(IDLE_IDENTITIES)]
    opened = [0]

    async def one(peer: Peer) -> None:
        async with peer.host.run([]):
            await peer.connect(node)
            held = []
            for _ in range(IDLE_STREAMS):
                with contextlib.suppress(Exception):
                    held.append(await peer.stream(node))
                    opened[0] += 1
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(one, peer)
        yield lambda: {"streams_opened": opened[0]}
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def silent(node: Proc, transport: str, sources: list[str]):
    flood = SilentFlood(target(node, transport), sources)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood.run)
        yield lambda: {"connections_opened": flood.opened, "connections_open": flood.open,
                       "dropped_by_node": flood.dropped}
        nursery.cancel_scope.cancel()


FLOODS = {
    "silent-tcp-ip": lambda node: silent(node, "tcp", ONE_IP),
    "silent-tcp-net": lambda node: silent(node, "tcp", ONE_NET),
    "silent-ws-ip": lambda node: silent(node, "ws", ONE_IP),
    "idle-streams": idle_streams,
}


async def dial_every_half_second(node: Proc, seconds: float) -> list[float | None]:
    """A fresh legitimate peer dials in every 0.5 s for `seconds`; each one's time, None if failed."""
    took: list[float | None] = []

    async def one(k: int) -> None:
        peer = Peer(source=f"127.0.{2 + k}.1")
        try:
            async with peer.host.run([]):
                took.append((await legitimate_dials(node, [peer]))[0])
        except Exception:  # noqa: BLE001 - any failure of the dial is what is counted
            took.append(None)

    async with trio.open_nursery() as nursery:
        for k in range(int(seconds * 2)):
            nursery.start_soon(one, k)
            await trio.sleep(0.5)
    return took


async def connection_flood(name: str, lifted: bool, seconds: float, root: Path) -> dict[str, Any]:
    config = root / f"{name}-{lifted}.toml"
    config.write_text(LIFTED if lifted else "")
    node = Proc(["--dht-mode", "server", "--config", str(config), "--listen", "/ip4/127.0.0.1/tcp/0/ws",
                 "--log-level", "error"], root / f"{name}-{lifted}", network="floods")
    pid = node.popen.pid
    try:
        before_cpu, started = cpu_seconds(pid), time.monotonic()
        await trio.sleep(5)
        idle = (cpu_seconds(pid) - before_cpu) / (time.monotonic() - started)
        rss_before = rss_mib(pid)
        async with FLOODS[name](node) as state:
            await trio.sleep(2)  # the flood at full strength
            before_cpu, started = cpu_seconds(pid), time.monotonic()
            took = await dial_every_half_second(node, seconds)
            busy = (cpu_seconds(pid) - before_cpu) / (time.monotonic() - started)
            held = {series: await trio.to_thread.run_sync(node.metric, f"overlay_resource_{series}")
                    for series in ("pending_handshakes", "inbound_connections", "inbound_streams")}
            rss_after = rss_mib(pid)
            attacker = state()
        refused = (await trio.to_thread.run_sync(node.get_json, "/v1/status"))["refused"]["connections"]
    finally:
        node.stop()
    ok = [t for t in took if t is not None]
    return {"flood": name, "limits": "lifted" if lifted else "shipped", "rss_before_mib": round(rss_before, 1),
            "rss_after_mib": round(rss_after, 1), "cpu_idle": round(idle, 3), "cpu_flood": round(busy, 3),
            "held": held, "attacker": attacker, "refused": refused, "dials_ok": len(ok), "dials": len(took),
            "dial_p50_s": round(statistics.median(ok), 3) if ok else None,
            "dial_max_s": round(max(ok), 3) if ok else None}


async def relay_flood(lifted: bool, seconds: float, root: Path) -> dict[str, Any]:
    local = {"webrtc_interfaces": ("127.0.0.1",), "log_level": "error"}
    async with cluster(root / f"relay-{lifted}") as c:
        relay = await c.start(**local)
        if lifted:
            relay.relay.budget = RelayBudget(NO_RELAY_LIMITS)
        hidden = await c.start(join=relay, reachability="private", **local)
        caller = await c.start(join=relay, **local)
        await wait_for(lambda: relay.signaling.server.is_registered(str(hidden.peer_id)), what="registered")
        received = sink(hidden)
        circuit = await caller.relay.dial(relay.peer_id, hidden.peer_id)
        cpu, started = time.process_time(), time.monotonic()
        with trio.move_on_after(seconds):
            await send(circuit, RELAY_BYTES)
        elapsed, used = time.monotonic() - started, time.process_time() - cpu
        refused = [line for line in relay.metrics.render().splitlines() if line.startswith("overlay_relay_refused")]
    return {"flood": "relay", "limits": "lifted" if lifted else "shipped", "bytes_arrived": received[0],
            "seconds": round(elapsed, 2), "process_cpu_s": round(used, 2),
            "mib_per_s": round(received[0] / 2**20 / elapsed, 2), "refused": refused}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| flood | limits | RSS before -> after MiB | CPU idle -> flood | held at the end | legitimate dials ok | p50 / max s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["flood"] == "relay":
            lines.append(f"| relay | {r['limits']} | | {r['process_cpu_s']} CPU s in {r['seconds']} s | "
                         f"{r['bytes_arrived'] / 2**20:.1f} MiB arrived ({r['mib_per_s']} MiB/s) | | |")
            continue
        held = ", ".join(f"{k} {v:g}" for k, v in r["held"].items())
        lines.append(f"| {r['flood']} | {r['limits']} | {r['rss_before_mib']} -> {r['rss_after_mib']} | "
                     f"{r['cpu_idle']:.0%} -> {r['cpu_flood']:.0%} | {held} | {r['dials_ok']}/{r['dials']} | "
                     f"{r['dial_p50_s']} / {r['dial_max_s']} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="floods-") as tmp:
        for name in args.floods:
            for lifted in (False, True):
                row = await (relay_flood(lifted, args.seconds, Path(tmp)) if name == "relay"
                             else connection_flood(name, lifted, args.seconds, Path(tmp)))
                print(row, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--floods", type=lambda s: s.split(","), default=[*FLOODS, "relay"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = trio.run(run, args)
    print(table(rows))
    write_result("floods", {"machine": machine(), "seconds": args.seconds, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
