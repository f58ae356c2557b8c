"""Many WebSocket clients on one node: memory and CPU per client, against a bare broadcast server.

    python benchmarks/clients.py [--clients 250,1000] [--messages 100] [--out FILE]

For each client count N, two servers get the same N clients (tests/loopback/wsclient.py, all
reading at full speed), each subscribed to one channel, then one publisher sending `--messages`
messages of 1,000 bytes at 100 a second:

- ours: an `overlay-node run` process, clients on WS /connect (channel "bench");
- bare: benchmarks/channels.py's `websockets` server (asyncio) that fans each message out to
  its other clients (`websockets.broadcast`), the least a Python server here pays per client.

Measured from /proc, for the server process: RSS before the clients and once they are all
subscribed (per client: the difference / N); CPU time (user + system) over 10 s of the N clients
idle (per client per minute), and over the publishing until every client has every message (per
delivered message). Ratios ours/bare are in the JSON and the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, write_result  # noqa: E402 - after the path is set
from overlay.node.apiauth import auth_headers  # noqa: E402
from tests.loopback.nodeproc import Proc as NodeProc  # noqa: E402
from tests.loopback.wsclient import WsClient  # noqa: E402

SIZE = 1000
RATE = 100
IDLE_SECONDS = 10.0


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Ours:
    name = "ours"

    def __init__(self, workdir: Path) -> None:
        self.node = NodeProc([], workdir / "node", network="bench-clients")
        self.process = psutil.Process(self.node.popen.pid)
        self.hostport, self.path, self.headers = self.node.api, "/connect", auth_headers(self.node.token)

    def subscribe(self) -> str:
        return json.dumps({"command": "subscribe", "nonce": "s", "data": {"channel": "bench"}})

    def subscribed(self, frame: str | bytes) -> bool:
        return json.loads(frame).get("data") == {"ok": True}

    def send(self, n: int) -> str:
        return json.dumps({"command": "send", "nonce": str(n), "data": {"channel": "bench", "message": "m" * SIZE}})

    def number(self, frame: str | bytes) -> int | None:
        obj = json.loads(frame)
        return int(obj["nonce"]) if obj.get("type") == "message" else None

    def stop(self) -> None:
        self.node.stop()


class Bare:
    name = "bare"
    def __init__(self, workdir: Path) -> None:
        """benchmarks/channels.py's bare server, the same baseline as there."""
        self.popen = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "channels.py"), "--role", "bare-server"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.process = psutil.Process(self.popen.pid)
        url = json.loads(self.popen.stdout.readline())["url"]
        self.hostport, self.path, self.headers = url.removeprefix("ws://").rstrip("/"), "/", []

    def subscribe(self) -> str:
        return "subscribe"

    def subscribed(self, frame: str | bytes) -> bool:
        return frame == "ok"

    def send(self, n: int) -> str:
        return f"{n} " + "m" * SIZE

    def number(self, frame: str | bytes) -> int | None:
        return int(frame.split(" ", 1)[0])

    def stop(self) -> None:
        self.popen.stdin.close()
        self.popen.wait(timeout=20)


async def measure(server: Ours | Bare, clients: int, messages: int) -> dict[str, Any]:
    rss_before = server.process.memory_info().rss
    gate = trio.Semaphore(64)
    conns: list[WsClient] = []

    async def join() -> None:
        async with gate:
            c = await WsClient.connect(server.hostport, server.path, server.headers)
            await c.send(server.subscribe())
            while not server.subscribed(await c.receive()):
                pass
            conns.append(c)

    publisher = await WsClient.connect(server.hostport, server.path, server.headers)
    await publisher.send(server.subscribe())
    while not server.subscribed(await publisher.receive()):
        pass
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(join)
    await trio.sleep(2.0)  # let the server settle after the handshakes
    rss_subscribed = server.process.memory_info().rss
    cpu_idle_start = cpu(server.process)
    await trio.sleep(IDLE_SECONDS)
    cpu_idle = cpu(server.process) - cpu_idle_start

    remaining = [clients]
    done = trio.Event()

    async def read(c: WsClient) -> None:
        count = 0
        while count < messages:
            if server.number(await c.receive()) is not None:
                count += 1
        remaining[0] -= 1
        if not remaining[0]:
            done.set()

    async def drain() -> None:
        while True:
            await publisher.receive()

    cpu_start, started = cpu(server.process), time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        for c in conns:
            nursery.start_soon(read, c)
        for n in range(messages):
            await publisher.send(server.send(n))
            await trio.sleep(1 / RATE)
        with trio.fail_after(300):
            await done.wait()
        nursery.cancel_scope.cancel()
    elapsed, cpu_busy = time.monotonic() - started, cpu(server.process) - cpu_start
    rss_after = server.process.memory_info().rss
    for c in [*conns, publisher]:
        await c.aclose()
    delivered = clients * messages
    return {
        "clients": clients, "messages": messages,
        "rss_before_mib": rss_before / 2**20, "rss_subscribed_mib": rss_subscribed / 2**20, "rss_after_mib": rss_after / 2**20,
        "rss_per_client_kib": (rss_subscribed - rss_before) / clients / 1024,
        "idle_cpu_ms_per_client_minute": cpu_idle / clients / IDLE_SECONDS * 60 * 1000,
        "cpu_us_per_delivered_message": cpu_busy / delivered * 1e6,
        "seconds_to_deliver_all": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="250,1000")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, max(counts) * 2 + 256)), hard))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        for n in counts:
            for kind in (Ours, Bare):
                workdir = Path(tmp) / f"{kind.name}-{n}"
                workdir.mkdir()
                server = kind(workdir)
                try:
                    row = {"system": kind.name, **trio.run(measure, server, n, args.messages)}
                finally:
                    server.stop()
                rows.append(row)
                print(json.dumps(row))
    for n in counts:
        ours, bare = (next(r for r in rows if r["system"] == s and r["clients"] == n) for s in ("ours", "bare"))
        ours["ratio_to_bare"] = {k: ours[k] / bare[k] for k in ("rss_per_client_kib", "cpu_us_per_delivered_message",
                                                                  "idle_cpu_ms_per_client_minute") if bare[k]}
    print(f"\n{'system':6} {'clients':>7} {'RSS/client KiB':>15} {'idle CPU ms/client/min':>23} {'CPU us/delivery':>16} {'all delivered s':>16}")
    for r in rows:
        print(f"{r['system']:6} {r['clients']:7} {r['rss_per_client_kib']:15.1f} {r['idle_cpu_ms_per_client_minute']:23.2f} "
              f"{r['cpu_us_per_delivered_message']:16.1f} {r['seconds_to_deliver_all']:16.1f}")
    write_result("clients", {"machine": machine(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
