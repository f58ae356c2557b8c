"""Channel relay benchmark: one channel over N node processes on loopback, a subscriber on each.

    python benchmarks/channels.py [--nodes 10] [--seconds 5] [--rates 250,500,...] [--out FILE]

Three systems carry the same 256-byte messages, one publisher, in the same run:

- ours: N `overlay-node run` processes (the first is every other's bootstrap), one WS /connect
  client subscribed to "bench" on each (`?batch=1`: what waited for it comes as one frame), the
  publisher a plain client of node 0 (one frame per send, as bare's); then the same with a
  password channel, whose messages are sealed end to end (the cost of the encryption);
- py-libp2p gossipsub: N processes, each a host like ours (Noise, Yamux, TCP) running GossipSub
  with its limits lifted (spam protection off, no per-topic rate cap, 1 s heartbeat, unsigned
  messages, 10,000 pending per peer), connected as a full mesh, each subscribed, node 0
  publishing;
- bare: one `websockets` broadcast server (asyncio) fanning each message out to N clients, the
  limit of this machine for fan-out to N sockets.

For each rate (messages/s, paced in 10 ms slices for `--seconds`), every subscriber counts the
messages it got and their latency (the send time travels in the message). Reported per system:
the highest sustained rate, that is delivered 100% to every subscriber with p99 latency at most
SUSTAINED_P99_MS (a system that buffers without bound also delivers everything, seconds late),
and p50/p99 latency at 1,000 msg/s; for ours, at each rate, the CPU time (user + system, from
/proc) per message sent of the publisher's node and of each other node on average.
Prints a table, writes JSON (default benchmarks/results/channels-<date>.json).

Roles (internal): `--role subscribers|publisher|bare-server|gossip` talk to the orchestrator
over stdin/stdout, one JSON line per message.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import queue
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402 - after the path is set
from overlay.node.apiauth import TOKEN_ENV, TOKEN_FILE, auth_headers  # noqa: E402

SIZE = 256
SUSTAINED_P99_MS = 250.0
CHANNEL = "bench"
TOPIC = "bench"


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def payload(seq: int) -> str:
    head = f"{seq} {time.time():.6f} "
    return head + "x" * (SIZE - len(head))


def parse(text: str) -> tuple[int, float]:
    seq, sent, _ = text.split(" ", 2)
    return int(seq), float(sent)


class Tally:
    """What one subscriber got: distinct sequence numbers and latencies."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen: set[int] = set()
        self.duplicates = 0
        self.latencies: list[float] = []

    def add(self, text: str) -> None:
        seq, sent = parse(text)
        if seq in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(seq)
            self.latencies.append(time.time() - sent)


def report(tallies: list[Tally]) -> dict[str, Any]:
    latencies = sorted(x for t in tallies for x in t.latencies)
    pct = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None
    return {"received": [len(t.seen) for t in tallies], "duplicates": sum(t.duplicates for t in tallies),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


# ---- roles: WebSocket subscribers and publisher (ours and bare) ----------------------------------


def subscription(args: argparse.Namespace) -> dict[str, str]:
    """A password channel's messages are sealed end to end (ChaCha20-Poly1305) by the publisher's
    node and opened by each member node: `--password` measures what that costs."""
    return {"topic": CHANNEL, "password": args.password} if args.password else {"topic": CHANNEL}


def role_subscribers(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import open_websocket_url

    async def main() -> None:
        tallies = [Tally() for _ in args.urls.split(",")]
        async with trio.open_nursery() as nursery:
            for url, tally in zip(args.urls.split(","), tallies):
                ready = trio.Event()
                nursery.start_soon(subscriber, url, tally, ready)
                await ready.wait()
            emit({"ready": True})
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                command = json.loads(line)["cmd"]
                if command == "reset":
                    for tally in tallies:
                        tally.reset()
                emit(report(tallies))

    async def subscriber(url: str, tally: Tally, ready) -> None:
        headers = ws_headers() if args.mode == "ours" else None
        url = url + "?batch=1" if args.mode == "ours" else url  # what waited, in one frame
        async with open_websocket_url(url, message_queue_size=100_000, max_message_size=1 << 20, extra_headers=headers) as ws:
            if args.mode == "ours":
                await ws.send_message(json.dumps({"command": "subscribe", "data": subscription(args)}))
                assert json.loads(await ws.get_message())[0]["data"] == {"ok": True}
            else:
                await ws.send_message("subscribe")
                assert await ws.get_message() == "ok"
            ready.set()
            while True:
                text = await ws.get_message()
                if args.mode != "ours":
                    tally.add(text)
                    continue
                for item in json.loads(text):
                    if item["type"] == "message":
                        tally.add(item["data"]["message"])

    trio.run(main)


def role_publisher(args: argparse.Namespace) -> None:
    import trio
    from trio_websocket import open_websocket_url

    async def main() -> None:
        headers = ws_headers() if args.mode == "ours" else None
        async with open_websocket_url(args.url, message_queue_size=100_000, extra_headers=headers) as ws:
            if args.mode == "ours":
                await ws.send_message(json.dumps({"command": "subscribe", "data": subscription(args)}))
                await ws.get_message()
            answered = 0
            async with trio.open_nursery() as nursery:
                async def drain() -> None:
                    nonlocal answered
                    while True:
                        await ws.get_message()  # our node's answers, bare's nothing
                        answered += 1
                nursery.start_soon(drain)
                sent = await paced(args.rate, args.seconds, lambda seq: ws.send_message(wrap(seq)))
                # Leaving closes the socket, and a node still reading our backlog would lose it:
                # ours answers every send, so wait for the answers (bare keeps up, or drops).
                with trio.move_on_after(60 if args.mode == "ours" else 0.5):
                    while args.mode != "ours" or answered < sent:
                        await trio.sleep(0.05)
                emit({"sent": sent, "answered": answered})
                nursery.cancel_scope.cancel()

    def wrap(seq: int) -> str:
        text = payload(seq)
        if args.mode == "ours":
            return json.dumps({"command": "send", "data": {"channel": CHANNEL, "message": text}})
        return text

    trio.run(main)


async def paced(rate: int, seconds: float, send) -> int:
    """Send `rate` messages a second for `seconds`, in 10 ms slices; returns how many went."""
    import trio

    start, sent = trio.current_time(), 0
    while True:
        elapsed = trio.current_time() - start
        if elapsed >= seconds:
            return sent
        due = min(int(rate * seconds), int(rate * (elapsed + 0.01)))
        while sent < due:
            await send(sent)
            sent += 1
        await trio.sleep_until(start + (int(elapsed / 0.01) + 1) * 0.01)


def role_bare_server(args: argparse.Namespace) -> None:
    import asyncio

    import websockets

    async def main() -> None:
        subscribers: set = set()

        async def handler(ws) -> None:
            async for message in ws:
                if message == "subscribe":
                    subscribers.add(ws)
                    await ws.send("ok")
                else:
                    websockets.broadcast(subscribers - {ws}, message)
            subscribers.discard(ws)

        async with websockets.serve(handler, "127.0.0.1", 0, max_size=1 << 20) as server:
            port = server.sockets[0].getsockname()[1]
            emit({"url": f"ws://127.0.0.1:{port}/"})
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    asyncio.run(main())


# ---- role: py-libp2p gossipsub ----------------------------------------------------------------------


def role_gossip(args: argparse.Namespace) -> None:
    import logging

    import multiaddr
    import trio
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from overlay.transport.host import build_host

    logging.disable(logging.WARNING)

    async def main() -> None:
        host = build_host(Ed25519PrivateKey.generate(), [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")])
        router = GossipSub(
            protocols=["/meshsub/1.1.0"], degree=6, degree_low=4, degree_high=12, heartbeat_interval=1,
            spam_protection_enabled=False, max_messages_per_topic_per_second=1e9, max_pending_messages_per_peer=10_000,
        )
        pubsub = Pubsub(host, router, strict_signing=False)
        tally = Tally()
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            async with background_trio_service(pubsub):
                async with background_trio_service(router):
                    await pubsub.wait_until_ready()
                    subscription = await pubsub.subscribe(TOPIC)
                    emit({"addr": str(host.get_addrs()[0])})  # with its /p2p/ part
                    for addr in filter(None, (args.peers or "").split(",")):
                        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                    async with trio.open_nursery() as nursery:
                        async def receive() -> None:
                            while True:
                                message = await subscription.get()
                                tally.add(message.data.decode())
                        nursery.start_soon(receive)
                        emit({"ready": True})
                        while True:
                            line = await trio.to_thread.run_sync(sys.stdin.readline)
                            if not line:
                                nursery.cancel_scope.cancel()
                                return
                            command = json.loads(line)
                            if command["cmd"] == "reset":
                                tally.reset()
                                emit(report([tally]))
                            elif command["cmd"] == "publish":
                                sent = await paced(command["rate"], command["seconds"],
                                                   lambda seq: pubsub.publish(TOPIC, payload(seq).encode()))
                                emit({"sent": sent})
                            elif command["cmd"] == "mesh":
                                emit({"mesh": len(router.mesh.get(TOPIC, ()))})
                            else:
                                emit(report([tally]))

    trio.run(main)


# ---- orchestrator ------------------------------------------------------------------------------------


class Proc:
    """A child speaking JSON lines; non-JSON output is ignored."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, cwd=str(ROOT))
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(l) for l in self.popen.stdout], daemon=True).start()

    def read(self, timeout: float = 60.0, prefix: str = "{") -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.popen.args[:4]} said nothing in {timeout:.0f}s (exit {self.popen.poll()})") from None
            if line.startswith(prefix):
                return line.strip()

    def ask(self, obj: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.send(obj)
        return json.loads(self.read(timeout))

    def send(self, obj: dict[str, Any]) -> None:
        self.popen.stdin.write(json.dumps(obj) + "\n")
        self.popen.stdin.flush()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def me(*argv: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *argv]


def api_token() -> str:
    """The one API token of the benchmark's nodes: start_nodes writes it into each data dir and
    into the environment, where the role processes (its children) find it."""
    return os.environ[TOKEN_ENV]


def ws_headers() -> list[tuple[str, str]]:
    return auth_headers(api_token())


def get_json(api: str, path: str) -> Any:
    request = urllib.request.Request(f"http://{api}{path}", headers=dict(ws_headers()))
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def settle(ask_report, expected: int, subscribers: int) -> dict[str, Any]:
    """Poll the subscribers until every message arrived or nothing moved for 2 s."""
    last, still = None, time.monotonic()
    while True:
        got = ask_report()
        total = sum(got["received"])
        if total >= expected * subscribers:
            return got
        if total != last:
            last, still = total, time.monotonic()
        elif time.monotonic() - still > 2.0:
            return got
        time.sleep(0.25)


def sweep(name: str, rates: list[int], run_rate) -> dict[str, Any]:
    """Rates in order until two in a row are not sustained."""
    steps, misses = [], 0
    for rate in rates:
        step = run_rate(rate)
        step["sustained"] = step["delivered"] >= 1.0 and (step["p99_ms"] or 0) <= SUSTAINED_P99_MS
        steps.append(step)
        print(f"  {name:<9} {rate:>6} msg/s: delivered {step['delivered']:.4f}, p50 {step['p50_ms']} ms, "
              f"p99 {step['p99_ms']} ms{'' if step['sustained'] else ' (not sustained)'}"
              + (f"; CPU per message {step['cpu']['publisher_node_us']} µs in the publisher's node, "
                 f"{step['cpu']['receiving_node_us']} µs in each other" if "cpu" in step else ""), flush=True)
        misses = 0 if step["sustained"] else misses + 1
        if misses == 2:
            break
    full = [s["rate"] for s in steps if s["sustained"]]
    at_1000 = next((s for s in steps if s["rate"] == 1000), None)
    return {"steps": steps, "max_sustained_rate": max(full) if full else 0,
            "p50_ms_at_1000": at_1000["p50_ms"] if at_1000 else None, "p99_ms_at_1000": at_1000["p99_ms"] if at_1000 else None,
            "delivered_at_1000": at_1000["delivered"] if at_1000 else None}


def step_result(rate: int, sent: int, got: dict[str, Any], subscribers: int) -> dict[str, Any]:
    delivered = sum(min(n, sent) for n in got["received"]) / (sent * subscribers) if sent else 0.0
    return {"rate": rate, "sent": sent, "delivered": round(delivered, 6), "duplicates": got["duplicates"],
            "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"]}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_message(pids: list[int], before: list[float], messages: int) -> dict[str, float | None]:
    """CPU µs per message in the publisher's node (pids[0]) and, on average, each other node."""
    if not messages:
        return {"publisher_node_us": None, "receiving_node_us": None}
    used = [cpu_seconds(pid) - was for pid, was in zip(pids, before)]
    return {"publisher_node_us": round(used[0] / messages * 1e6, 1),
            "receiving_node_us": round(statistics.mean(used[1:]) / messages * 1e6, 1) if used[1:] else None}


def start_nodes(count: int, procs: list[Proc], prefix: str) -> list[dict[str, Any]]:
    """`count` overlay-node processes on loopback, all bootstrapped from the first, healthy
    (INM neighbours found); their processes are appended to `procs` for the caller to stop."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # the nodes' data dirs, once they are stopped
    binary = str(Path(sys.executable).parent / "overlay-node")
    nodes: list[dict[str, Any]] = []
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(32))
    for i in range(count):
        (root / f"n{i}").mkdir(mode=0o700)
        (root / f"n{i}" / TOKEN_FILE).write_text(api_token() + "\n")
        (root / f"n{i}" / TOKEN_FILE).chmod(0o600)
        argv = [binary, "run", "--data-dir", str(root / f"n{i}"), "--listen", "/ip4/127.0.0.1/tcp/0", "--api",
                "127.0.0.1:0", "--network", "bench", "--no-port-mapping", "--log-level", "error"]
        if nodes:
            argv += ["--bootstrap", nodes[0]["addr"]]
        proc = Proc(argv)
        procs.append(proc)
        peer = proc.read(60, "peer id: ").removeprefix("peer id: ")
        addr = proc.read(60, "listening on ").removeprefix("listening on ")
        api = proc.read(60, "api on ").removeprefix("api on http://")
        nodes.append({"peer_id": peer, "addr": addr, "api": api, "pid": proc.popen.pid})
    wait_until(lambda: all(get_json(n["api"], "/health")["healthy"] == "good" for n in nodes[1:]), "every node healthy")
    return nodes


def run_ours(args: argparse.Namespace, rates: list[int], password: str = "") -> dict[str, Any]:
    procs: list[Proc] = []
    secret = ("--password", password) if password else ()
    try:
        nodes = start_nodes(args.nodes, procs, "channels-bench-")
        subs = Proc(me("--role", "subscribers", "--mode", "ours", *secret, "--urls",
                       ",".join(f"ws://{n['api']}/connect" for n in nodes)))
        procs.append(subs)
        subs.read(60)
        others = sorted(n["peer_id"] for n in nodes[1:])
        wait_until(lambda: sorted(get_json(nodes[0]["api"], "/v1/channels")["members"].get(CHANNEL, [])) == others,
                   "node 0 knows where the channel is open")

        pids = [n["pid"] for n in nodes]

        def run_rate(rate: int) -> dict[str, Any]:
            subs.ask({"cmd": "reset"})
            before = [cpu_seconds(pid) for pid in pids]
            pub = Proc(me("--role", "publisher", "--mode", "ours", *secret, "--url", f"ws://{nodes[0]['api']}/connect",
                          "--rate", str(rate), "--seconds", str(args.seconds)))
            sent = json.loads(pub.read(args.seconds + 90))["sent"]
            pub.stop()
            step = step_result(rate, sent, settle(lambda: subs.ask({"cmd": "report"}), sent, args.nodes), args.nodes)
            step["cpu"] = cpu_per_message(pids, before, sent)
            return step

        result = sweep("ours, password channel" if password else "ours", rates, run_rate)
        result["dropped"] = [get_json(n["api"], "/v1/channels")["dropped"] for n in nodes]
        return result
    finally:
        for proc in reversed(procs):
            proc.stop()


def run_bare(args: argparse.Namespace, rates: list[int]) -> dict[str, Any]:
    server = Proc(me("--role", "bare-server"))
    subs = None
    try:
        url = json.loads(server.read(30))["url"]
        subs = Proc(me("--role", "subscribers", "--mode", "bare", "--urls", ",".join([url] * args.nodes)))
        subs.read(60)

        def run_rate(rate: int) -> dict[str, Any]:
            subs.ask({"cmd": "reset"})
            pub = Proc(me("--role", "publisher", "--mode", "bare", "--url", url, "--rate", str(rate), "--seconds", str(args.seconds)))
            sent = json.loads(pub.read(args.seconds + 90))["sent"]
            pub.stop()
            return step_result(rate, sent, settle(lambda: subs.ask({"cmd": "report"}), sent, args.nodes), args.nodes)

        return sweep("bare", rates, run_rate)
    finally:
        for proc in (subs, server):
            if proc is not None:
                proc.stop()


def run_gossipsub(args: argparse.Namespace, rates: list[int]) -> dict[str, Any]:
    procs: list[Proc] = []
    try:
        addrs: list[str] = []
        for _ in range(args.nodes):
            proc = Proc(me("--role", "gossip", "--peers", ",".join(addrs)))
            procs.append(proc)
            addrs.append(json.loads(proc.read(60))["addr"])
            proc.read(60)  # ready
        wait_until(lambda: all(p.ask({"cmd": "mesh"})["mesh"] >= 1 for p in procs), "every gossipsub mesh formed")

        def ask_report() -> dict[str, Any]:
            reports = [p.ask({"cmd": "report"}) for p in procs]
            return {"received": [r["received"][0] for r in reports], "duplicates": sum(r["duplicates"] for r in reports),
                    "p50_ms": statistics.median([r["p50_ms"] for r in reports[1:] if r["p50_ms"] is not None] or [0]),
                    "p99_ms": max([r["p99_ms"] for r in reports[1:] if r["p99_ms"] is not None] or [0])}

        def run_rate(rate: int) -> dict[str, Any]:
            for p in procs:
                p.ask({"cmd": "reset"})
            sent = procs[0].ask({"cmd": "publish", "rate": rate, "seconds": args.seconds}, timeout=args.seconds + 120)["sent"]
            got = settle(ask_report, sent, args.nodes - 1)
            got["received"] = got["received"][1:]  # the publisher does not get its own messages
            return step_result(rate, sent, got, args.nodes - 1)

        return sweep("gossipsub", rates, run_rate)
    finally:
        for proc in procs:
            proc.stop()




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rates", default="250,500,750,1000,1500,2000,3000,4000,6000,8000")
    p.add_argument("--gossipsub-rates", default="10,20,50,100,250,500,1000")
    p.add_argument("--only", choices=("ours", "ours-password", "bare", "gossipsub"), help="run one system only")
    p.add_argument("--out", type=Path)
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--urls", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    p.add_argument("--peers", help=argparse.SUPPRESS)
    p.add_argument("--password", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    role = {"subscribers": role_subscribers, "publisher": role_publisher, "bare-server": role_bare_server,
            "gossip": role_gossip}.get(args.role or "")
    if role is not None:
        return role(args)
    rates = [int(r) for r in args.rates.split(",")]
    result: dict[str, Any] = {"machine": machine(), "command": sys.argv, "nodes": args.nodes, "message_bytes": SIZE}
    print(f"{args.nodes} subscribers, {SIZE}-byte messages, {args.seconds:.0f} s per rate", flush=True)
    empty = {"max_sustained_rate": 0, "p50_ms_at_1000": None, "p99_ms_at_1000": None}
    result["ours"] = run_ours(args, rates) if args.only in (None, "ours") else empty
    result["ours_password"] = run_ours(args, rates, "bench-password") if args.only in (None, "ours-password") else empty
    result["bare_websockets"] = run_bare(args, rates) if args.only in (None, "bare") else empty
    gossip_rates = [int(r) for r in args.gossipsub_rates.split(",")]
    result["gossipsub"] = run_gossipsub(args, gossip_rates) if args.only in (None, "gossipsub") else empty
    ours, sealed, bare, gossip = result["ours"], result["ours_password"], result["bare_websockets"], result["gossipsub"]
    result["ratio_to_bare"] = round(ours["max_sustained_rate"] / bare["max_sustained_rate"], 3) if bare["max_sustained_rate"] else None
    result["password_ratio_to_bare"] = (round(sealed["max_sustained_rate"] / bare["max_sustained_rate"], 3)
                                        if bare["max_sustained_rate"] else None)
    print(f"{'system':<34} {'sustained msg/s':>16} {'p50 ms @1000':>13} {'p99 ms @1000':>13}")
    for label, r in ((f"overlay channels ({args.nodes} nodes)", ours), ("  the same, a password channel", sealed),
                     ("bare websockets broadcast server", bare),
                     (f"py-libp2p gossipsub ({args.nodes} nodes)", gossip)):
        print(f"{label:<34} {r['max_sustained_rate']:>16} {str(r['p50_ms_at_1000']):>13} {str(r['p99_ms_at_1000']):>13}")
    print(f"ours / bare websockets: {result['ratio_to_bare']}x (password channel: {result['password_ratio_to_bare']}x)")
    write_result("channels", result, args.out)


if __name__ == "__main__":
    main()
