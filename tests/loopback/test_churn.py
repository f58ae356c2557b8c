"""Churn with real processes: 30 `overlay-node run` processes on loopback; each round kills 30% of
them with SIGKILL, at random (a bootstrap too), and starts as many fresh ones (new identities,
bootstrapped from three live nodes). After each round:

- every live node looks every other live node up by peer ID (`GET /v1/find`): at least 99% found;
- dials by peer ID succeed: each live node drops its connections to three random others and
  connects again (`POST /v1/connect`: lookup, dial);
- a channel's subscribers on live nodes receive every message sent more than 10 s after the
  round, by a client that subscribed on a random live node when the round ended (subscribers on
  killed nodes are replaced by new ones on fresh nodes);
- no node crashed, and the descriptors and RSS of the nodes that lived through every round stay
  bounded (stated below).

`OVERLAY_CHURN_ROUNDS` (default 2, what CI runs) sets the rounds; the seed is printed, and
`OVERLAY_CHURN_SEED` repeats a run's choices.
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.loopback.nodeproc import Proc

pytestmark = pytest.mark.timeout(900)

NODES = 30
KILL = 9  # 30%
ROUNDS = int(os.environ.get("OVERLAY_CHURN_ROUNDS", "2"))  # CI's; docs/benchmarks.md has a longer run
SUBSCRIBERS = 8
MESSAGES = 10
CHANNEL = "churn"
NETWORK = "churn"
MiB = 1 << 20
FD_GROWTH = 40  # descriptors a survivor may gain from the first round to the last (its peers are replaced, not added)
RSS_GROWTH = 48 * MiB


class Net:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root, self.rng = root, rng
        self.live: list[Proc] = []
        self.killed: set[str] = set()  # peer IDs, marked before the kill
        self.started = 0
        self.pool = ThreadPoolExecutor(8)

    def _start(self, bootstraps: list[str]) -> Proc:
        self.started += 1
        n = self.started
        args = ["--dht-mode", "server", "--log-level", "warning"]
        for b in bootstraps:
            args += ["--bootstrap", b]
        return Proc(args, self.root / f"n{n}", network=NETWORK, log=self.root / f"n{n}.log")

    def start(self, count: int) -> list[Proc]:
        """`count` fresh nodes, in parallel, each bootstrapped from three live ones."""
        if not self.live:  # the first node is everyone's first bootstrap
            self.live.append(self._start([]))
            count -= 1
        jobs = [self.pool.submit(self._start, [p.addrs[0] for p in self.rng.sample(self.live, min(3, len(self.live)))])
                for _ in range(count)]
        fresh, errors = [], []
        for job in jobs:
            try:
                fresh.append(job.result())
            except Exception as e:  # noqa: BLE001 - the others are kept, to be stopped
                errors.append(e)
        self.live += fresh
        if errors:
            raise errors[0]
        return fresh

    def kill(self, count: int) -> list[Proc]:
        doomed = self.rng.sample(self.live, count)
        for p in doomed:
            self.killed.add(p.peer_id)
            p.popen.kill()
            p.popen.wait()
            self.live.remove(p)
        return doomed

    def map(self, fn, items) -> list:
        return list(self.pool.map(fn, items))

    def stop(self) -> list[tuple[Proc, int, str]]:
        results = self.map(lambda p: (p, *p.stop()), self.live)
        self.pool.shutdown()
        return results


def lookup(args: tuple[Proc, Proc]) -> bool:
    a, b = args
    status, body = a.request("GET", f"/v1/find/{b.peer_id}")
    return status == 200 and body["peer_id"] == b.peer_id and bool(body["addrs"])


def redial(args: tuple[Proc, Proc]) -> str | None:
    """None when `a` reaches `b` again by peer ID after dropping its connections; else why not."""
    a, b = args
    a.request("DELETE", f"/v1/peers/{b.peer_id}")
    status, body = a.request("POST", f"/v1/connect/{b.peer_id}")
    return None if status == 200 else f"{status} {body}"


class Subscribers:
    """One WS /connect client subscribed to the channel on each of some nodes, counting what it gets."""

    def __init__(self, nursery: trio.Nursery, net: Net) -> None:
        self.nursery, self.net = nursery, net
        self.got: dict[str, list[str]] = {}  # peer ID of the client's node -> nonces received
        self.scopes: dict[str, trio.CancelScope] = {}

    async def add(self, node: Proc) -> None:
        ready = trio.Event()
        self.got[node.peer_id] = []

        async def run() -> None:
            with trio.CancelScope() as scope:
                self.scopes[node.peer_id] = scope
                try:
                    async with node.websocket("/connect") as ws:
                        await ws.send_message(json.dumps({"command": "subscribe", "nonce": "s", "data": {"channel": CHANNEL}}))
                        while True:
                            frame = json.loads(await ws.get_message())
                            if frame["type"] == "response":
                                assert frame["data"] == {"ok": True}, frame
                                ready.set()
                            elif frame["type"] == "message":
                                self.got[node.peer_id].append(frame["nonce"])
                except ConnectionClosed:
                    if node.peer_id not in self.net.killed:  # the node lives: losing the client is a failure
                        raise

        self.nursery.start_soon(run)
        with trio.fail_after(60):
            await ready.wait()

    def gone(self, peer_id: str) -> None:
        """Its node was killed: the client is gone with it."""
        self.scopes.pop(peer_id).cancel()
        del self.got[peer_id]


async def test_lookups_dials_and_a_channel_recover_from_rounds_of_sigkill_churn(tmp_path):
    seed = int(os.environ.get("OVERLAY_CHURN_SEED", random.randrange(2**32)))
    print(f"churn seed {seed}")
    rng = random.Random(seed)
    net = Net(tmp_path, rng)
    began = trio.current_time()
    try:
        await trio.to_thread.run_sync(net.start, NODES)
        first = list(net.live)
        usage: dict[str, list[tuple[int, int]]] = {p.peer_id: [] for p in first}  # survivors: (fds, rss) per round
        async with trio.open_nursery() as nursery:
            subs = Subscribers(nursery, net)
            await wait_joined(net, net.live)
            for p in rng.sample(net.live, SUBSCRIBERS):
                await subs.add(p)
            print(f"{NODES} nodes up and joined after {trio.current_time() - began:.0f} s")
            for round_number in range(1, ROUNDS + 1):
                began = trio.current_time()
                killed = await trio.to_thread.run_sync(net.kill, KILL)
                for p in killed:
                    if p.peer_id in subs.got:
                        subs.gone(p.peer_id)
                fresh = await trio.to_thread.run_sync(net.start, KILL)
                await wait_joined(net, fresh)
                for p in fresh[: SUBSCRIBERS - len(subs.got)]:
                    await subs.add(p)
                for p in net.live:
                    assert p.popen.poll() is None, f"node {p.peer_id} exited {p.popen.returncode}: {p.errors()[-3000:]}"

                replaced = trio.current_time()
                pairs = [(a, b) for a in net.live for b in net.live if a is not b]
                found = await trio.to_thread.run_sync(net.map, lookup, pairs)
                share = sum(found) / len(pairs)
                looked = trio.current_time()
                print(f"round {round_number}: {KILL} replaced in {replaced - began:.0f} s; "
                      f"{sum(found)} of {len(pairs)} lookups found in {looked - replaced:.0f} s")
                assert share >= 0.99, f"round {round_number}: {len(pairs) - sum(found)} of {len(pairs)} lookups failed"

                dials = [(a, b) for a in net.live for b in rng.sample([x for x in net.live if x is not a], 3)]
                failed = [e for e in await trio.to_thread.run_sync(net.map, redial, dials) if e is not None]
                assert not failed, f"round {round_number}: {len(failed)} of {len(dials)} dials failed: {failed[:3]}"

                dialed = trio.current_time()
                await channel_delivery(net, subs, round_number)
                print(f"round {round_number}: {len(dials)} dials in {dialed - looked:.0f} s, "
                      f"channel delivery in {trio.current_time() - dialed:.0f} s")
                for p in net.live:
                    if p.peer_id in usage:
                        proc = psutil.Process(p.popen.pid)
                        usage[p.peer_id].append((proc.num_fds(), proc.memory_info().rss))
            nursery.cancel_scope.cancel()

        survivors = {pid: u for pid, u in usage.items() if len(u) == ROUNDS}
        assert survivors, "no node lived through every round (the seed is printed)"
        for pid, rounds in survivors.items():
            (fds1, rss1), (fds_last, rss_last) = rounds[0], rounds[-1]
            print(f"survivor {pid[-6:]}: fds {[f for f, _ in rounds]}, RSS MiB {[round(r / MiB) for _, r in rounds]}")
            assert fds_last - fds1 <= FD_GROWTH, f"{pid}: descriptors {[f for f, _ in rounds]}"
            assert rss_last - rss1 <= RSS_GROWTH, f"{pid}: RSS {[r // MiB for _, r in rounds]} MiB"
    finally:
        results = await trio.to_thread.run_sync(net.stop)
    for p, code, err in results:
        assert code == 0 and "Traceback" not in err, f"node {p.peer_id} exited {code}: {err[-3000:]}"


async def wait_joined(net: Net, nodes: list[Proc]) -> None:
    """Until each node has joined (a bootstrap reached, its record published); the first node,
    which has no bootstrap, joins nothing: it is found through those that join it."""

    def joined(p: Proc) -> bool:
        status = p.get_json("/v1/status")
        return status["joined"] or not status["bootstraps"]

    with trio.fail_after(120):
        while True:
            if all(await trio.to_thread.run_sync(net.map, joined, nodes)):
                return
            await trio.sleep(0.5)


async def channel_delivery(net: Net, subs: Subscribers, round_number: int) -> None:
    """A client on a live node subscribes right after the round and, 10 s later, sends MESSAGES:
    every subscriber gets each."""
    publisher_node = net.rng.choice(net.live)
    nonces = [f"r{round_number}-{i}" for i in range(MESSAGES)]
    async with publisher_node.websocket("/connect") as ws:
        await ws.send_message(json.dumps({"command": "subscribe", "nonce": "p", "data": {"channel": CHANNEL}}))
        while json.loads(await ws.get_message())["type"] != "response":
            pass
        await trio.sleep(10)  # the grace: messages sent more than 10 s after the round
        members = set((await trio.to_thread.run_sync(publisher_node.get_json, "/v1/channels"))["members"].get(CHANNEL, []))
        for nonce in nonces:
            await ws.send_message(json.dumps({"command": "send", "nonce": nonce, "data": {"channel": CHANNEL, "message": nonce}}))
        with trio.move_on_after(60):
            while not all(set(nonces) <= set(got) for got in subs.got.values()):
                await trio.sleep(0.2)
    missing = {pid: sorted(set(nonces) - set(got)) for pid, got in subs.got.items() if not set(nonces) <= set(got)}
    if missing:
        nodes = {p.peer_id: p for p in net.live}
        report = [f"round {round_number}: subscribers missed messages: {missing}; sent from {publisher_node.peer_id}, "
                  f"whose members then were {sorted(members)}"]
        for p in [publisher_node, *(nodes[pid] for pid in missing)]:
            drops = [line for line in p.request("GET", "/metrics")[1].splitlines()
                     if ("inm" in line or "channel" in line or "mesh" in line) and not line.startswith("#")]
            report.append(f"{p.peer_id}: {json.dumps(p.get_json('/v1/channels'))} {drops}")
        raise AssertionError("\n".join(report))
