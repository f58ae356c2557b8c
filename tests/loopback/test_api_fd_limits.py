"""The API cannot take the node down by file descriptors (issue 15).

A real node limited to 1,024 open files gets 1,100 connections at once (authenticated WebSockets,
silent TCP connections, upgrades without the token) and must keep answering `GET /health`, count
what it refused, recover, and never log a traceback. Unit tests cover the cap formula, the accept
loop under EMFILE, the WebSocket cap, trio's accept log, and interface polling under EMFILE.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import socket
from collections import Counter
from pathlib import Path

import ifaddr
import multiaddr
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from trio_websocket import open_websocket_url

import overlay.node.node
from nat.natpmp import NatPmpClient
from nat.portmap import keep_port_mapping
from overlay.node.apiauth import auth_headers
from overlay.node.apilimits import IDLE_TIMEOUT, ConnectionGate, WebSocketCap, serve
from overlay.core.fdlimits import FdExhaustion, api_caps, quiet_trio_accept_errors
from overlay.core.metrics import Counter as MetricCounter
from overlay.node.node import expand_unspecified
from tests.loopback.nodeproc import http

NODE_LIMIT = 1024
ATTEMPTS = 1100
DEFAULT_MAX_PEERS = 256


def _limit_node() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NODE_LIMIT, NODE_LIMIT))


@pytest.fixture
def limited(procs):
    """Node processes at RLIMIT_NOFILE (NODE_LIMIT, NODE_LIMIT), unless told otherwise."""
    return lambda args, data_dir, preexec_fn=_limit_node: procs(args, data_dir, preexec_fn=preexec_fn)


@pytest.fixture
def many_fds():
    """This process holds every client socket: its soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit is {hard}; this test holds {ATTEMPTS} sockets (needs 4096)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- a real node at 1,024 open files --------------------------------------------------------


@pytest.mark.timeout(180)
async def test_node_survives_more_connections_than_descriptors(limited, many_fds, tmp_path):
    """550 authenticated WebSockets first (they fill their cap; the rest are refused at the
    handshake or at accept), then 500 silent connections and 50 upgrades without the token, all
    held. The reserve still lets /health in, idle connections lose their slots, the node's
    descriptors stay near the connection cap, and it recovers."""
    proc = limited([], tmp_path / "node")
    caps = api_caps(NODE_LIMIT, DEFAULT_MAX_PEERS)
    host, port = proc.api.split(":")
    url = f"ws://{proc.api}/connect"
    upgrade = (f"GET /connect HTTP/1.1\r\nHost: {proc.api}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    release = trio.Event()
    tally: Counter[str] = Counter()
    most_fds = 0
    sampling = trio.CancelScope()

    async def count_fds() -> None:  # the node's open descriptors, sampled while the storm lasts
        nonlocal most_fds
        with sampling:
            while True:
                try:
                    most_fds = max(most_fds, len(os.listdir(f"/proc/{proc.popen.pid}/fd")))
                except OSError:
                    return  # no /proc here, or the node is gone (asserted elsewhere)
                await trio.sleep(0.05)

    async def websocket() -> None:
        try:
            # a connection closed before the handshake ends only at connect_timeout in trio_websocket
            async with open_websocket_url(url, extra_headers=auth_headers(proc.token), connect_timeout=20,
                                          disconnect_timeout=5):
                tally["opened"] += 1
                await release.wait()
        except Exception as e:  # noqa: BLE001 - a refused attempt shows up in several types
            tally[f"websocket {type(e).__name__}"] += 1

    async def raw(send: bytes) -> None:
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            await stream.send_all(send)
            tally["raw"] += 1
            await release.wait()
        finally:
            await stream.aclose()

    async def metrics() -> str:
        status, text = await trio.to_thread.run_sync(lambda: proc.request("GET", "/metrics"))
        assert status == 200
        return text

    async def eventually(check, timeout: float, what: str):
        deadline = trio.current_time() + timeout
        while True:
            try:
                result = await check()
                if result:
                    return result
            except (OSError, AssertionError):  # refused at the cap, or not yet
                pass
            if trio.current_time() > deadline:
                raise AssertionError(f"{what} not within {timeout}s: {dict(tally)}")
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count_fds)
        for _ in range(ATTEMPTS // 2):
            nursery.start_soon(websocket)
        with trio.move_on_after(60):
            while tally["opened"] < caps.websockets:
                await trio.sleep(0.05)
        for i in range(ATTEMPTS // 2):
            nursery.start_soon(raw, upgrade if i % 10 == 0 else b"")
        with trio.move_on_after(60):
            while tally["raw"] < ATTEMPTS // 2:
                await trio.sleep(0.05)
        assert tally["raw"] == ATTEMPTS // 2, dict(tally)

        status, health = await eventually(
            lambda: trio.to_thread.run_sync(lambda: http(proc.api, "GET", "/health", {}, timeout=2)),
            IDLE_TIMEOUT + 5, "GET /health")
        assert status == 200 and health["healthy"] in ("good", "degraded"), (status, health)
        assert proc.popen.poll() is None

        async def idle_released() -> str | None:  # only the WebSockets and this request hold a slot
            text = await metrics()
            return text if _metric(text, "overlay_api_connections") == tally["opened"] + 1 else None

        text = await eventually(idle_released, IDLE_TIMEOUT + 10, "idle connections closed")
        assert most_fds <= caps.connections + 32, f"the node held {most_fds} descriptors at once"
        assert tally["opened"] == caps.websockets == _metric(text, "overlay_api_websockets"), dict(tally)
        assert _metric(text, "overlay_api_refused_total", reason="connections") > 0
        assert _metric(text, "overlay_api_refused_total", reason="websockets") > 0
        assert "overlay_fd_exhausted_total{" not in text  # the caps kept the node below its limit
        assert proc.popen.poll() is None
        release.set()
        sampling.cancel()

    async def new_websocket() -> bool:
        async with open_websocket_url(url, extra_headers=auth_headers(proc.token), connect_timeout=5) as ws:
            await ws.ping()
        return True

    await eventually(new_websocket, 30, "a new WebSocket after the others closed")
    assert proc.popen.poll() is None
    code, stderr = proc.stop()
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def test_run_raises_its_soft_limit_to_the_hard_one(limited, tmp_path):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= NODE_LIMIT or not Path("/proc/self/limits").exists():
        pytest.skip("needs a finite hard open-file limit above 1024 and /proc")
    proc = limited(["--log-level", "debug"], tmp_path / "node",
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NODE_LIMIT, hard)))
    limits = Path(f"/proc/{proc.popen.pid}/limits").read_text()
    assert re.search(rf"^Max open files\s+{hard}\s+{hard}\s", limits, re.MULTILINE), limits
    code, stderr = proc.stop()
    assert f"open-file limit: {hard} (hard {hard})" in stderr


# ---- the cap formula -----------------------------------------------------------------------


# ---- the accept loop -----------------------------------------------------------------------


class _Exhausted(trio.abc.Listener):
    """accept() fails with EMFILE `failures` times, then hands out in-memory streams."""

    def __init__(self, failures: int, streams: int) -> None:
        self.failures = failures
        self.streams = [trio.testing.memory_stream_pair() for _ in range(streams)]
        self.handed = 0

    async def accept(self):
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        if self.handed == len(self.streams):
            await trio.sleep_forever()
        self.handed += 1
        return self.streams[self.handed - 1][0]

    async def aclose(self) -> None:
        pass


async def test_accept_loop_retries_emfile_counts_it_once_and_closes_beyond_the_cap(monkeypatch, caplog,
                                                                                  autojump_clock):
    tracker = FdExhaustion()
    monkeypatch.setattr("overlay.node.apilimits.FD_EXHAUSTION", tracker)
    refused = MetricCounter()
    gate = ConnectionGate(2, refused)
    listener = _Exhausted(failures=30, streams=5)
    finish = trio.Event()
    served: list[object] = []

    async def handler(stream) -> None:
        served.append(stream)
        await finish.wait()

    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.accept_loop, listener, handler, nursery)
            while listener.handed < 5:
                await trio.sleep(0.1)
            await trio.testing.wait_all_tasks_blocked()
            assert len(served) == 2 and gate.open == 2
            assert refused.get(reason="connections") == 3
            for client in (pair[1] for pair in listener.streams[2:]):
                assert await client.receive_some(10) == b""  # closed at once
            finish.set()
            await trio.testing.wait_all_tasks_blocked()
            assert gate.open == 0
            nursery.cancel_scope.cancel()
    assert tracker.total("api-accept") == 30
    assert len([r for r in caplog.records if "api-accept" in r.getMessage()]) == 1


async def test_a_connection_its_client_reset_frees_its_slot_at_once():
    """Closed with the answer unread (a reset): Hypercorn alone would hold it until its
    keep-alive timer ran out."""

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")  # what ASGI asks of an app without it
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    config.keep_alive_timeout = IDLE_TIMEOUT
    gate = ConnectionGate(4, MetricCounter())
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, app, config, gate)
        host, port = bound[0].removeprefix("http://").rsplit(":", 1)
        for _ in range(3):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while not (await stream.socket.recv(4096, socket.MSG_PEEK)).endswith(b"ok"):
                await trio.sleep(0.01)
            await stream.aclose()  # with the answer unread: the kernel resets the connection
        with trio.fail_after(1):  # well before IDLE_TIMEOUT
            while gate.open:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_websocket_cap_refuses_at_the_handshake_and_frees_its_slot():
    refused = MetricCounter()
    leave = trio.Event()

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await leave.wait()

    cap = WebSocketCap(app, 1, refused)

    async def session(sent: list[dict]) -> None:
        async def receive() -> dict:
            return {"type": "websocket.connect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await cap({"type": "websocket"}, receive, send)

    first: list[dict] = []
    second: list[dict] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session, first)
        await trio.testing.wait_all_tasks_blocked()
        await session(second)
        assert first == [{"type": "websocket.accept"}] and second[0]["type"] == "websocket.close"
        assert refused.get(reason="websockets") == 1 and cap.open == 1
        leave.set()
    assert cap.open == 0


async def test_trio_accept_loop_emfile_becomes_one_count(monkeypatch, caplog, autojump_clock):
    """py-libp2p's listeners run trio's serve_listeners, which logs a traceback per retry."""
    tracker = FdExhaustion()
    monkeypatch.setattr("overlay.core.fdlimits.FD_EXHAUSTION", tracker)
    quiet_trio_accept_errors()
    listener = _Exhausted(failures=20, streams=1)
    handled = trio.Event()

    async def handler(stream) -> None:
        handled.set()

    with caplog.at_level(logging.WARNING):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
            await handled.wait()
            nursery.cancel_scope.cancel()
    assert tracker.total("p2p-accept") == 20
    assert not [r for r in caplog.records if r.name == "trio.serve_listeners"]
    assert len([r for r in caplog.records if "p2p-accept" in r.getMessage()]) == 1


# ---- interface polling -------------------------------------------------------------------


def test_interface_polling_survives_emfile(monkeypatch, caplog):
    tracker = FdExhaustion()
    monkeypatch.setattr(overlay.node.node, "FD_EXHAUSTION", tracker)
    wildcard = [multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001")]
    before = expand_unspecified(wildcard)
    assert before and all("0.0.0.0" not in str(a) for a in before)

    def exhausted():
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(ifaddr, "get_adapters", exhausted)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert expand_unspecified(wildcard) == before  # the last known addresses stand in
    assert tracker.total("interfaces") == 5
    assert len([r for r in caplog.records if "interfaces" in r.getMessage()]) == 1
    loopback = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")]
    assert expand_unspecified(loopback) == loopback and tracker.total("interfaces") == 5  # no polling needed


async def test_port_mapping_without_a_descriptor_gives_up_without_ending_the_node(monkeypatch):
    def exhausted(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(trio.socket, "socket", exhausted)
    states: list[dict] = []
    await keep_port_mapping(4001, lambda state, addr: states.append(state), "127.0.0.1", [NatPmpClient("127.0.0.1")])
    assert states[-1]["state"] == "none" and "Too many open files" in states[-1]["error"]
