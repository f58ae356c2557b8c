"""A node process with a thousand WebSocket clients on one channel, and a hundred MessageNet
relayers, some of them reading slowly and a few not at all: every other client receives every
message, in order, while the stalled ones still hold theirs; what the slow ones lose is counted,
message for message; the node's memory stays bounded and it keeps answering.

The clients are wsproto sockets (tests/loopback/wsclient.py): a slow one has a small receive
buffer and reads a few hundred bytes at a time, so the node's send path to it really backs up.
The node runs with `client_queue = 16` (default 1,024): the same bound, reached with fewer
messages.
"""

from __future__ import annotations

import base64
import json
import resource

import psutil
import pytest
import trio

from overlay.messagenet import relayer
from overlay.node.apiauth import auth_headers
from tests.loopback.nodeproc import Proc
from tests.loopback.wsclient import WsClient

pytestmark = pytest.mark.timeout(300)

QUEUE = 16  # the least `client_queue` may be
SLOW_RCVBUF = 2048  # the kernel doubles it, and keeps a minimum: a window of a few KB
MiB = 1 << 20


def raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.fail(f"this test needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def start_node(tmp_path) -> Proc:
    config = tmp_path / "node.toml"
    config.write_text(f"client_queue = {QUEUE}\n")
    return Proc(["--config", str(config)], tmp_path / "node")


async def metric(node: Proc, series: str) -> float:
    return await trio.to_thread.run_sync(node.metric, series)


async def connect_all(node: Proc, path: str, kinds: list[str]) -> list[WsClient]:
    """One client per entry of `kinds` ("normal", "slow", "stalled"), at most 64 handshakes at a time."""
    clients: list[WsClient | None] = [None] * len(kinds)
    gate = trio.Semaphore(64)

    async def one(i: int) -> None:
        async with gate:
            slow = kinds[i] != "normal"
            clients[i] = await WsClient.connect(node.api, path, auth_headers(node.token),
                                                rcvbuf=SLOW_RCVBUF if slow else None, read_size=256 if slow else 65536)

    async with trio.open_nursery() as nursery:
        for i in range(len(kinds)):
            nursery.start_soon(one, i)
    return clients  # type: ignore[return-value]


class Peak:
    """The node's largest RSS while the messages flow, sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.process, self.rss = psutil.Process(pid), 0

    async def run(self) -> None:
        while True:
            self.rss = max(self.rss, self.process.memory_info().rss)
            await trio.sleep(0.1)


async def test_a_thousand_channel_clients_every_message_to_the_fast_ones_losses_of_the_slow_ones_counted(tmp_path):
    kinds = ["normal"] * 890 + ["slow"] * 100 + ["stalled"] * 10
    messages = 100
    raise_own_fd_limit(len(kinds) + 256)
    node = start_node(tmp_path)
    try:
        publisher = await WsClient.connect(node.api, "/connect", auth_headers(node.token))
        await publisher.send(json.dumps({"command": "subscribe", "nonce": "p", "data": {"channel": "crowd"}}))
        assert json.loads(await publisher.receive())["data"] == {"ok": True}
        clients = await connect_all(node, "/connect", kinds)
        rss_connected = psutil.Process(node.popen.pid).memory_info().rss

        async def subscribe(c: WsClient) -> None:
            await c.send(json.dumps({"command": "subscribe", "nonce": "s", "data": {"channel": "crowd"}}))
            assert json.loads(await c.receive())["data"] == {"ok": True}

        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(subscribe, c)

        got: list[list[int]] = [[] for _ in clients]
        normal_done = trio.Event()
        release = trio.Event()  # the stalled clients start reading, the slow ones read at full speed
        remaining = [kinds.count("normal")]

        async def read(i: int) -> None:
            c, kind = clients[i], kinds[i]
            if kind == "stalled":
                await release.wait()
            while True:
                if kind == "slow" and not release.is_set():
                    await trio.sleep(0.2)  # 256 bytes at a time: about a message a second
                frame = json.loads(await c.receive())
                if frame.get("type") != "message":
                    continue
                got[i].append(int(frame["nonce"]))
                if kind == "normal" and len(got[i]) == messages:
                    remaining[0] -= 1
                    if not remaining[0]:
                        normal_done.set()

        async def publish() -> None:
            body = "m" * 1000
            for n in range(messages):
                await publisher.send(json.dumps({"command": "send", "nonce": str(n), "data": {"channel": "crowd", "message": body}}))
                await trio.sleep(0.005)

        async def drain_publisher() -> None:
            while True:
                await publisher.receive()  # the answers to its sends

        peak = Peak(node.popen.pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peak.run)
            nursery.start_soon(drain_publisher)
            for i in range(len(clients)):
                nursery.start_soon(read, i)
            await publish()
            with trio.fail_after(120):
                await normal_done.wait()  # while the stalled clients have read nothing
            assert not any(got[i] for i, k in enumerate(kinds) if k == "stalled")
            release.set()
            receivers = len(clients)
            with trio.fail_after(120):  # every message reached its client or was counted lost
                while sum(map(len, got)) + await metric(node, "overlay_channel_client_dropped_total") < receivers * messages:
                    await trio.sleep(0.25)
            nursery.cancel_scope.cancel()

        dropped = await metric(node, "overlay_channel_client_dropped_total")
        for i, kind in enumerate(kinds):
            assert got[i] == sorted(set(got[i])), f"client {i} ({kind}): out of order or twice"
            if kind == "normal":
                assert got[i] == list(range(messages)), f"client {i} lost messages"
        lost = sum(messages - len(g) for g in got)
        assert lost == dropped > 0, "each lost message is counted as dropped, and no other"
        assert all(len(got[i]) < messages for i, k in enumerate(kinds) if k == "stalled")
        slow_lost = [messages - len(got[i]) for i, k in enumerate(kinds) if k == "slow"]
        assert sum(1 for n in slow_lost if n) >= len(slow_lost) // 2, slow_lost
        # bounded: what waits for a slow or stalled client is QUEUE messages (and socket buffers),
        # whatever it does not read
        growth = peak.rss - rss_connected
        assert growth < 64 * MiB, f"node RSS grew by {growth / MiB:.0f} MiB with {len(clients)} clients subscribed"
        status, _ = node.request("GET", "/v1/status")
        assert status == 200
        for c in clients:
            await c.aclose()
        await publisher.aclose()
    finally:
        code, err = node.stop()
    assert code == 0, err[-3000:]


def relayer_frame(action: int, **body) -> bytes:
    return bytes([action]) + json.dumps(body, separators=(",", ":")).encode()


async def test_a_hundred_messagenet_relayers_the_slow_ones_losses_reported_to_the_sender(tmp_path):
    kinds = ["normal"] * 88 + ["slow"] * 10 + ["stalled"] * 2
    messages = 60
    raise_own_fd_limit(len(kinds) + 256)
    node = start_node(tmp_path)
    try:
        sender = await WsClient.connect(node.api, "/relayer", auth_headers(node.token))
        relayers = await connect_all(node, "/relayer", kinds)
        for i, r in enumerate(relayers, 1):
            await r.send(relayer_frame(relayer.REGISTER, relayer_id=i))
        await sender.send(relayer_frame(relayer.REGISTER, relayer_id=10_000))
        got: list[list[int]] = [[] for _ in relayers]
        reports: dict[int, str | None] = {}
        release = trio.Event()
        total = len(relayers) * messages

        async def read(i: int) -> None:
            r, kind = relayers[i], kinds[i]
            if kind == "stalled":
                await release.wait()
            while True:
                if kind == "slow" and not release.is_set():
                    await trio.sleep(0.2)
                frame = await r.receive()
                assert frame[0] == relayer.SEND_TO_CLIENT, frame
                got[i].append(int(base64.b64decode(json.loads(frame[1:])["data"])))

        async def read_reports() -> None:
            while True:
                frame = await sender.receive()
                assert frame[0] == relayer.DELIVERY, frame
                body = json.loads(frame[1:])
                reports[body["id"]] = body.get("error")

        async def send() -> None:
            for n in range(messages):
                data = base64.b64encode(str(n).encode().rjust(1000)).decode()
                for i in range(len(relayers)):
                    await sender.send(relayer_frame(relayer.SEND_TO_VALIDATOR, relayer_id=i + 1, node_id=node.peer_id,
                                                    raw_data=data, id=n * len(relayers) + i))
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_reports)
            for i in range(len(relayers)):
                nursery.start_soon(read, i)
            await send()
            with trio.fail_after(120):
                while len(reports) < total or any(len(got[i]) < messages for i, k in enumerate(kinds) if k == "normal"):
                    await trio.sleep(0.1)
            release.set()
            delivered = {n for n, error in reports.items() if error is None}
            with trio.fail_after(120):
                while sum(map(len, got)) < len(delivered):
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

        for i, kind in enumerate(kinds):
            assert got[i] == sorted(got[i])
            mine = [n // len(relayers) for n in delivered if n % len(relayers) == i]
            assert got[i] == sorted(mine), f"relayer {i} ({kind}) got what was reported delivered, and only that"
            if kind == "normal":
                assert got[i] == list(range(messages))
        refused = {n: e for n, e in reports.items() if e is not None}
        assert refused and set(refused.values()) == {"relayer too slow"}
        assert await metric(node, 'overlay_relayer_dropped_total{reason="relayer too slow"}') == len(refused)
        for r in [*relayers, sender]:
            await r.aclose()
    finally:
        code, err = node.stop()
    assert code == 0, err[-3000:]
