"""Soak: a small network under a mixed workload for a long time; does one node's use grow?

    python benchmarks/soak.py [--minutes 30] [--sample 60] [--nodes 6] [--out DIR] [--check]

`--nodes` `overlay-node run` processes on loopback (node 0 is observed and never restarted), and
at once, until the time is up:

- lookups: a random node looks up another by peer ID, every 0.5 s;
- dials: a random node drops its connections to another and dials it again by peer ID, every 2 s
  (both avoid a node being restarted, and one during which a restart began is not counted);
- channel traffic: a subscriber on each node, a publisher on node 0 sending 10 messages a second
  (every subscriber must receive them: counted);
- reconnecting clients: a channel client on a random node connects, subscribes, reads, leaves,
  every 0.5 s, and a MessageNet relayer registers and leaves, every 2 s;
- restarts of neighbours: every 60 s one node other than node 0 is stopped and started again
  (same identity), so node 0's links, streams and DHT entries to it die and come back.

Every `--sample` seconds node 0's RSS and open descriptors (from /proc) and its trio tasks and
open streams (`overlay_trio_tasks`, `overlay_streams_open` in /metrics) are recorded. The growth
of each is the slope of a least-squares line through the samples after the first fifth of the
run (start-up fills caches and tables), per minute. Writes soak.json and soak.png into `--out`
(default benchmarks/results/soak-<date>/). With `--check`, exits 1 if a slope is above LIMITS
(what `tests/loopback/test_soak.py` runs for two minutes in CI).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, machine  # noqa: E402 - after the path is set
from tests.loopback.nodeproc import Proc  # noqa: E402

MiB = 1 << 20
# Per minute, after the warm-up. The workload makes 30 dials, 120 client reconnects, 30 relayer
# sessions and 600 channel messages a minute: a leak of one task, descriptor or stream per
# operation, or of 10 KiB per message (6 MiB), is far above these. Between them and what the
# samples' noise can give: tasks and streams move by several between two samples (a least-squares
# slope over 2 minutes then errs by about 2.5 a minute), descriptors and RSS hardly.
LIMITS = {"rss_mib": 3.0, "fds": 3.0, "tasks": 10.0, "streams": 10.0}
NETWORK = "soak"


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, value)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


class Soak:
    def __init__(self, root: Path, nodes: int, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.nodes: list[Proc] = []
        try:
            for i in range(nodes):
                self.nodes.append(self._start(i))
        except BaseException:
            for p in self.nodes:
                p.stop()
            raise
        self.counts = {"lookups": 0, "lookups_found": 0, "dials": 0, "dials_ok": 0, "published": 0, "reconnects": 0,
                       "relayer_sessions": 0, "restarts": 0}
        self.delivered: dict[int, int] = {}
        self.restarting: set[int] = set()  # node indexes being restarted (lookups and dials avoid them)

    def _start(self, i: int) -> Proc:
        args = ["--dht-mode", "server", "--log-level", "warning"]
        if i:
            args += ["--bootstrap", self.nodes[0].addrs[0]]
        return Proc(args, self.root / f"n{i}", network=NETWORK, log=self.root / f"n{i}.log")

    def pair(self) -> tuple[Proc, Proc, int]:
        """Two distinct nodes, neither restarting, and the restart count to compare after."""
        up = [p for i, p in enumerate(self.nodes) if i not in self.restarting]
        a, b = self.rng.sample(up, 2)
        return a, b, self.counts["restarts"]

    @staticmethod
    async def ask(node: Proc, method: str, path: str) -> int:
        """The status of one API call; 0 when the node is down (restarting)."""
        try:
            return (await trio.to_thread.run_sync(node.request, method, path))[0]
        except OSError:
            return 0

    async def lookups(self) -> None:
        while True:
            a, b, restarts = self.pair()
            status = await self.ask(a, "GET", f"/v1/find/{b.peer_id}")
            if restarts == self.counts["restarts"]:  # a restart meanwhile: not counted either way
                self.counts["lookups"] += 1
                self.counts["lookups_found"] += status == 200
            await trio.sleep(0.5)

    async def dials(self) -> None:
        while True:
            a, b, restarts = self.pair()
            await self.ask(a, "DELETE", f"/v1/peers/{b.peer_id}")
            status = await self.ask(a, "POST", f"/v1/connect/{b.peer_id}")
            if restarts == self.counts["restarts"]:
                self.counts["dials"] += 1
                self.counts["dials_ok"] += status == 200
            await trio.sleep(2)

    async def subscriber(self, i: int) -> None:
        """A subscriber on node i, again after each restart of its node."""
        while True:
            try:
                async with self.nodes[i].websocket("/connect") as ws:
                    await ws.send_message(json.dumps({"command": "subscribe", "nonce": "s", "data": {"channel": "soak"}}))
                    while True:
                        if json.loads(await ws.get_message()).get("type") == "message":
                            self.delivered[i] = self.delivered.get(i, 0) + 1
            except Exception:  # noqa: BLE001 - its node restarted: subscribe again
                await trio.sleep(1)

    async def publisher(self) -> None:
        async with self.nodes[0].websocket("/connect") as ws:
            await ws.send_message(json.dumps({"command": "subscribe", "nonce": "p", "data": {"channel": "soak"}}))
            await ws.get_message()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, ws)
                while True:
                    self.counts["published"] += 1
                    await ws.send_message(json.dumps({"command": "send", "nonce": str(self.counts["published"]),
                                                      "data": {"channel": "soak", "message": "x" * 200}}))
                    await trio.sleep(0.1)

    @staticmethod
    async def _drain(ws: Any) -> None:
        while True:
            await ws.get_message()

    async def reconnecting_clients(self) -> None:
        while True:
            node = self.rng.choice(self.nodes)
            try:
                async with node.websocket("/connect") as ws:
                    await ws.send_message(json.dumps({"command": "subscribe", "nonce": "c", "data": {"channel": "soak"}}))
                    with trio.move_on_after(0.3):
                        while True:
                            await ws.get_message()
                self.counts["reconnects"] += 1
            except Exception:  # noqa: BLE001 - a restarting node
                pass
            await trio.sleep(0.5)

    async def relayers(self) -> None:
        while True:
            node = self.rng.choice(self.nodes)
            try:
                async with node.websocket("/relayer") as ws:
                    await ws.send_message(b"\x01" + json.dumps({"relayer_id": self.rng.randrange(1, 1000)}).encode())
                    await ws.send_message(b"\x03" + json.dumps({"relayer_id": 1, "raw_data": base64.b64encode(b"hi").decode()}).encode())
                    await trio.sleep(0.5)
                self.counts["relayer_sessions"] += 1
            except Exception:  # noqa: BLE001 - a restarting node
                pass
            await trio.sleep(2)

    async def restarts(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            i = self.rng.randrange(1, len(self.nodes))
            self.restarting.add(i)
            self.counts["restarts"] += 1
            await trio.to_thread.run_sync(self.nodes[i].stop)
            self.nodes[i] = await trio.to_thread.run_sync(self._start, i)
            with trio.move_on_after(60):  # until it has published its new addresses
                while (await trio.to_thread.run_sync(self.nodes[i].get_json, "/v1/status"))["joined"] is not True:
                    await trio.sleep(0.5)
            self.restarting.discard(i)

    def sample(self, started: float) -> dict[str, float]:
        node = self.nodes[0]
        proc = psutil.Process(node.popen.pid)
        return {"minute": (time.monotonic() - started) / 60, "rss_mib": proc.memory_info().rss / MiB, "fds": proc.num_fds(),
                "tasks": node.metric("overlay_trio_tasks"), "streams": node.metric("overlay_streams_open")}


async def run(soak: Soak, seconds: float, every: float, restart_every: float) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for task in (soak.lookups, soak.dials, soak.publisher, soak.reconnecting_clients, soak.relayers):
            nursery.start_soon(task)
        for i in range(len(soak.nodes)):
            nursery.start_soon(soak.subscriber, i)
        nursery.start_soon(soak.restarts, restart_every)
        while time.monotonic() - started < seconds:
            await trio.sleep(every)
            samples.append(await trio.to_thread.run_sync(soak.sample, started))
            print(json.dumps({**samples[-1], **soak.counts}), flush=True)
        nursery.cancel_scope.cancel()
    return samples


def plot(samples: list[dict[str, float]], growth: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    labels = {"rss_mib": "RSS (MiB)", "fds": "open descriptors", "tasks": "trio tasks", "streams": "open streams"}
    for ax, (key, label) in zip(axes.flat, labels.items()):
        ax.plot([s["minute"] for s in samples], [s[key] for s in samples], marker=".")
        ax.set_title(f"{label}: {growth[key]:+.2f} per minute after the warm-up", fontsize=9)
        ax.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.suptitle("node 0 under the soak workload (benchmarks/soak.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--restart-every", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if a growth is above {LIMITS}")
    args = parser.parse_args()
    out = args.out or RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    host = machine()  # before the run: its load average is the machine's, not the soak's
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        soak = Soak(Path(tmp), args.nodes, random.Random(args.seed))
        try:
            samples = trio.run(run, soak, args.minutes * 60, args.sample, args.restart_every)
        finally:
            results = [(p, *p.stop()) for p in soak.nodes]
    crashed = [f"{p.peer_id}: exit {code}: {err[-2000:]}" for p, code, err in results if code != 0 or "Traceback" in err]
    settled = samples[len(samples) // 5:]
    growth = {key: slope([(s["minute"], s[key]) for s in settled]) for key in LIMITS}
    over = {key: value for key, value in growth.items() if value > LIMITS[key]}
    published = soak.counts["published"]
    result = {"machine": host, "minutes": args.minutes, "nodes": args.nodes, "counts": soak.counts,
              "delivered_per_subscriber": soak.delivered, "growth_per_minute": growth, "limits": LIMITS,
              "over": over, "crashed": crashed, "samples": samples}
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    plot(samples, growth, out / "soak.png")
    print(json.dumps({"growth_per_minute": growth, "over": over, "counts": soak.counts, "published": published,
                      "delivered_to_node0_subscriber": soak.delivered.get(0, 0), "crashed": crashed}))
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return 1 if args.check and (over or crashed) else 0


if __name__ == "__main__":
    sys.exit(main())
