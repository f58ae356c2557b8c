"""NAT traversal end to end in one process on loopback: a node that says it is behind NAT
registers with a signalling node, publishes relay addresses, and is dialed by peer ID through
the relay at once, then over a direct WebRTC path; plus the refusals of signalling and relay, and
how concurrent dials of one peer share an attempt."""

from __future__ import annotations

import multiaddr
import pytest
import trio
import trio.testing
from libp2p.peer.id import ID

from nat.plan import parse_circuit
from nat.traversal import Traversal
from nat.webrtc import WebRtcConfig
from overlay.core.metrics import Registry
from overlay.core.errors import DialError
from overlay.transport.framed import FramedStream
from signaling import messages
from tests.conftest import wait_for
from tests.loopback.nodes import cluster, relay_address_stored

pytestmark = pytest.mark.timeout(120)
LO = {"webrtc_interfaces": ("127.0.0.1",)}


def path_to(node, peer) -> str:
    return next((p["path"] for p in node.peers() if p["peer_id"] == str(peer)), "")


async def private_setup(c):
    boot = await c.start(**LO)
    hidden = await c.start(join=boot, reachability="private", **LO)
    # a DHT client: as a DHT server it could be one of the hidden node's signalling nodes
    caller = await c.start(join=boot, dht_mode="client", **LO)
    await wait_for(lambda: caller.joined.is_set(), what="caller joined")

    await wait_for(relay_address_stored(boot, hidden), what="the record with the relay address stored in the DHT")
    # the hidden node's own lookups may have dialed out to the caller, as they may behind a NAT
    await caller.host.disconnect(hidden.peer_id)
    await wait_for(lambda: not caller.dialer.connected(hidden.peer_id), what="disconnected")
    return boot, hidden, caller


async def test_a_node_behind_nat_is_relayed_at_once_then_reached_directly(tmp_path):
    async with cluster(tmp_path) as c:
        boot, hidden, caller = await private_setup(c)
        addrs = [multiaddr.Multiaddr(a) for a in hidden.record.addrs]
        assert [parse_circuit(a)[0] for a in addrs] == [boot.peer_id.to_bytes()], "one relay address per registration"
        assert hidden.core.server is False and boot.signaling.server.is_registered(str(hidden.peer_id))

        report = await caller.first_stream(hidden.peer_id)
        assert report["path"] == "relayed" and report["rtt_ms"] > 0
        await wait_for(lambda: path_to(caller, hidden.peer_id) == "direct-udp", what="direct WebRTC path")
        await wait_for(lambda: "relayed" not in next(p["paths"] for p in caller.peers() if p["peer_id"] == str(hidden.peer_id)),
                       timeout=40, what="the relayed connection retired")
        assert 0 < await caller.ping(hidden.peer_id) < 5
        assert path_to(hidden, caller.peer_id) == "direct-udp"


async def test_relay_refuses_unregistered_targets_and_strangers_cannot_open_stop_streams(tmp_path):
    async with cluster(tmp_path) as c:
        boot, hidden, caller = await private_setup(c)
        with pytest.raises(DialError, match="not-registered"):
            await caller.relay.dial(boot.peer_id, caller.peer_id)  # caller is not registered with boot
        # a stranger (not one of hidden's signalling nodes) pretends to relay a caller to it
        await caller.dialer.connect(hidden.peer_id, [multiaddr.Multiaddr(a) for a in boot.full_addrs()[:0]] or hidden.host.get_addrs())
        framed = FramedStream(await caller.host.new_stream(hidden.peer_id, [caller.relay.protocol]), messages.MAX_FRAME)
        await framed.write(messages.encode(messages.Incoming(str(boot.peer_id))))
        reply = messages.decode(await framed.read())
        assert isinstance(reply, messages.Error) and reply.code == "refused"
        await wait_for(lambda: hidden.metrics.render().count('overlay_relay_refused_total{reason="refused"} 1'), what="counted")


async def test_signalling_refuses_bad_input_and_keeps_serving_registrations(tmp_path):
    async with cluster(tmp_path) as c:
        boot, hidden, caller = await private_setup(c)
        stream = await caller.host.new_stream(boot.peer_id, [caller.signaling.protocol])
        framed = FramedStream(stream, messages.MAX_FRAME)
        await framed.write(messages.encode(messages.Signal("s1", "offer", {}, to=str(caller.peer_id))))
        reply = messages.decode(await framed.read())
        assert isinstance(reply, messages.Error) and reply.code == "not-registered"
        await framed.write(b"{not json")
        reply = messages.decode(await framed.read())
        assert isinstance(reply, messages.Error) and reply.code == "bad-message"
        assert await framed.read() is None, "closed after a malformed message"
        big = FramedStream(await caller.host.new_stream(boot.peer_id, [caller.signaling.protocol]), 10 * messages.MAX_FRAME)
        await big.write(b"x" * (messages.MAX_FRAME + 1))
        with trio.fail_after(10):
            assert await big.read() is None, "an oversized frame ends the stream"
        # a flood of offers from one peer is cut by the rate limit; the registration stays
        flood = FramedStream(await caller.host.new_stream(boot.peer_id, [caller.signaling.protocol]), messages.MAX_FRAME)
        for i in range(60):
            await flood.write(messages.encode(messages.Signal(f"f{i}", "offer", {"junk": i}, to=str(hidden.peer_id))))
        codes = []
        with trio.fail_after(10):
            while len(codes) < 60:  # each offer gets one reply: refused here, or a bye from the peer
                msg = messages.decode(await flood.read())
                codes.append(msg.code if isinstance(msg, messages.Error) else msg.kind)
        assert codes.count("rate-limited") >= 35 and codes.count("bye") == 60 - codes.count("rate-limited")
        assert boot.signaling.server.is_registered(str(hidden.peer_id))
        await wait_for(lambda: 'reason="bad-description"' in hidden.metrics.render(), what="junk offers refused and counted")
        report = await caller.first_stream(hidden.peer_id)
        assert report["rtt_ms"] > 0, "the node behind NAT is still reachable"


async def test_idle_nodes_do_not_spin(tmp_path):
    """Every task of an idle network blocks (a task that loops without waiting never does)."""
    async with cluster(tmp_path) as c:
        boot, hidden, caller = await private_setup(c)
        with trio.fail_after(20):
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)


class _AddressDialer:
    """A dialer whose dials of OLD hang until `release`, then fail; other addresses connect."""

    OLD = "/ip4/198.18.4.2/tcp/4001"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = trio.Event()

    async def connect(self, peer, addrs, timeout=10.0, direct_only=False):
        self.calls.append([str(a) for a in addrs])
        if self.OLD in self.calls[-1]:
            await self.release.wait()
            raise DialError("the old address does not answer")
        return addrs[0]


async def test_a_dial_from_a_newer_record_does_not_share_the_fate_of_one_still_under_way_from_an_older_one():
    """A peer's address changed: a dial begun from its old record (a redial, a DHT request) is
    still under way when a caller brings the new record. The caller's dial must not join the old
    one and fail with it: it waits for it to end and then dials the new addresses."""
    dialer = _AddressDialer()

    class Signaling:
        on_signal = None

    traversal = Traversal(None, dialer, Signaling(), None, WebRtcConfig(), Registry(), lambda *_: ())
    peer = ID.from_base58("12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE")
    results: dict[str, object] = {}

    async def dial(name: str, addr: str) -> None:
        try:
            results[name] = await traversal.connect(peer, [multiaddr.Multiaddr(addr)])
        except DialError as e:
            results[name] = e

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(traversal.run)
            nursery.start_soon(dial, "old", dialer.OLD)
            await wait_for(lambda: dialer.calls, what="the old dial under way")
            nursery.start_soon(dial, "new", "/ip4/198.18.4.3/tcp/4001")
            await trio.testing.wait_all_tasks_blocked()
            dialer.release.set()
            await wait_for(lambda: len(results) == 2, what="both dials done")
            nursery.cancel_scope.cancel()
    assert isinstance(results["old"], DialError)
    assert results["new"] == "direct"
    assert dialer.calls[-1] == ["/ip4/198.18.4.3/tcp/4001"]
