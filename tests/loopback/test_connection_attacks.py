"""Hostile peers against a node's connection slots, on loopback against an `overlay-node run`
process: silent TCP connections from one IP and from a whole /24, strangers' identities filling
the inbound connections, and streams opened and left silent. Legitimate peers dial in from other
addresses of 127/8 while the attack runs (127.0.0.1 is exempt from the per-IP limits, so no
peer here uses it)."""

from __future__ import annotations

import contextlib

import pytest
import trio

from overlay.core.resources import ResourceLimits
from tests.conftest import wait_for
from tests.loopback.hostile import Peer, SilentFlood, legitimate_dials, rss_mib, target
from tests.loopback.nodeproc import Proc

pytestmark = pytest.mark.timeout(240)

NETWORK = "conn-attacks"
HELD = 300  # silent connections the flood keeps trying to hold
LEGITIMATE = 9


def node_proc(tmp_path, config: str = "") -> Proc:
    """A DHT server listening on TCP and on WebSocket."""
    path = tmp_path / "node.toml"
    path.write_text(config)
    return Proc(["--dht-mode", "server", "--config", str(path), "--listen", "/ip4/127.0.0.1/tcp/0/ws"],
                tmp_path / "node", network=NETWORK)


async def metric(node: Proc, series: str) -> float:
    return await trio.to_thread.run_sync(node.metric, series)


async def refused(node: Proc) -> dict[str, float]:
    status = await trio.to_thread.run_sync(node.get_json, "/v1/status")
    return status["refused"]["connections"]


ONE_IP = ["127.0.1.2"]
ONE_SLASH_24 = [f"127.0.1.{i}" for i in range(2, 62)]


@pytest.mark.parametrize("transport, sources", [("tcp", ONE_IP), ("tcp", ONE_SLASH_24), ("ws", ONE_IP)],
                         ids=["tcp-one-ip", "tcp-one-slash-24", "websocket-one-ip"])
async def test_legitimate_dials_succeed_during_a_silent_connection_flood(tmp_path, transport, sources):
    node = node_proc(tmp_path)
    legit = [Peer(source=f"127.0.{2 + i}.1") for i in range(LEGITIMATE)]
    limits = ResourceLimits()
    try:
        async with contextlib.AsyncExitStack() as stack:
            for peer in legit:
                await stack.enter_async_context(peer.host.run([]))
            flood = SilentFlood(target(node, transport), sources, held=HELD)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood.run)
                with trio.fail_after(60):
                    while flood.opened < HELD:  # the flood is at full strength
                        await trio.sleep(0.1)
                before = rss_mib(node.popen.pid)
                took = await legitimate_dials(node, legit)
                held = await metric(node, "overlay_resource_pending_handshakes")
                grew = rss_mib(node.popen.pid) - before
                nursery.cancel_scope.cancel()
            reasons = await refused(node)
        assert len(took) == LEGITIMATE and max(took) < 10, took
        cap, reason = (limits.pending_per_ip, "pending-ip") if len(sources) == 1 else (limits.per_group, "group")
        assert held <= cap, f"{held} handshakes pending: the flood may hold {cap}"
        assert flood.dropped >= HELD - cap, "the node dropped the connections over the limit"
        assert reasons.get(reason, 0) > 0, reasons
        assert grew < 16, f"the node grew by {grew:.1f} MiB"
    finally:
        node.stop()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_silent_connections_are_dropped_at_the_handshake_deadline(tmp_path, transport):
    """A connection that never starts Noise (or the WebSocket upgrade) is closed
    `handshake_timeout` after it was taken."""
    node = node_proc(tmp_path, "[resource_limits]\nhandshake_timeout = 1.0\n")
    try:
        stream = await trio.open_tcp_stream(*target(node, transport), local_address="127.0.1.2")
        started = trio.current_time()
        with trio.fail_after(10):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
        waited = trio.current_time() - started
        await stream.aclose()
        assert 0.9 < waited < 5, f"closed after {waited:.1f} s"
    finally:
        node.stop()


async def test_strangers_fill_only_their_share_and_a_known_peer_still_connects(tmp_path):
    """With max_connections = 8, strangers (each its own identity and address) fill the 6 inbound
    connections strangers may hold; the 7th is refused, counted, and a trusted peer still gets
    one of the two kept for known peers."""
    trusted = Peer(source="127.0.3.1")
    node = node_proc(tmp_path, f'max_connections = 8\ntrusted_peers = ["{trusted.id}"]\n')
    limits = ResourceLimits(connections=8)
    strangers = [Peer(source=f"127.0.{4 + i}.1") for i in range(limits.inbound + 1)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for peer in [*strangers, trusted]:
                await stack.enter_async_context(peer.host.run([]))
            for peer in strangers[:-1]:
                await peer.connect(node)
            await wait_for(lambda: node.metric("overlay_resource_inbound_connections") == limits.inbound,
                           what="the strangers' connections open")
            with pytest.raises(Exception):
                with trio.fail_after(10):
                    await legitimate_dials(node, strangers[-1:])
            assert (await refused(node)).get("inbound", 0) >= 1  # once per attempt: connect, then the stream
            await legitimate_dials(node, [trusted])
            assert await metric(node, "overlay_resource_inbound_connections") == limits.inbound + 1
    finally:
        node.stop()


async def test_a_connection_holds_at_most_its_share_of_idle_streams(tmp_path):
    """A stranger opens 200 DHT streams on one connection and sends nothing on them: the node
    holds at most its cap per peer and protocol, refuses the rest (counted), and closes the held
    ones once idle; another peer is answered throughout."""
    node = node_proc(tmp_path, "[dht_limits]\nmax_stream_idle = 10.0\n")  # 30 s by default
    mallory, bob = Peer(source="127.0.1.2"), Peer(source="127.0.2.1")
    limits = ResourceLimits()
    try:
        async with mallory.host.run([]), bob.host.run([]):
            await mallory.connect(node)
            streams = []
            for _ in range(200):
                with contextlib.suppress(Exception):
                    streams.append(await mallory.stream(node))
            await wait_for(lambda: node.metric('overlay_resource_refused_total{reason="streams-protocol"}')
                           >= 200 - limits.streams_per_protocol, what="the streams over the cap refused")
            assert node.metric("overlay_resource_inbound_streams") <= limits.streams_per_protocol
            assert await legitimate_dials(node, [bob])
            # the DHT closes a silent stream after its idle timeout; nothing is left after it
            await wait_for(lambda: node.metric("overlay_resource_inbound_streams") == 0, timeout=30,
                           what="the idle streams closed")
    finally:
        node.stop()
