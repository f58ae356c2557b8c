"""Sybil signalling nodes against a node behind NAT (signaling/registrations.py): identities of
their own, on their own networks, that announce themselves as signalling nodes in the DHT, and
others that are proper DHT servers the node's lookups find; all answer every signalling request
eagerly (no load, every registration taken). The node registers only with public nodes it verified, and
keeps those once established."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

from overlay.core.framing import frame
from overlay.kademlia.io import kad_protocol
from overlay.kademlia.wire import Message, MessageType, encode_message
from overlay.transport.framed import FramedStream
from signaling import messages
from signaling.service import signal_protocol
from tests.conftest import wait_for
from tests.loopback.hostile import Peer, running
from tests.loopback.nodes import cluster
from tests.loopback.test_traversal import LO

pytestmark = pytest.mark.timeout(180)
SYBILS = 20
OLD_SIGNALING_KEY = hashlib.sha256(b"/overlay/signaling").digest()  # where signalling nodes used to be found


def eager_signaling(peer: Peer, registered: list[bytes]) -> None:
    """The sybil's signalling server: no load at all, and every registration taken (counted)."""

    async def serve(stream) -> None:
        framed = FramedStream(stream, messages.MAX_FRAME)
        while (data := await framed.read()) is not None:
            msg = messages.decode(data)
            if isinstance(msg, messages.Load):
                await framed.write(messages.encode(messages.Load(0)))
            elif isinstance(msg, messages.Register):
                registered.append(peer.id.to_bytes())
                await framed.write(messages.encode(messages.Registered(60)))
            elif isinstance(msg, messages.Ping):
                await framed.write(messages.encode(messages.Pong()))

    peer.host.set_stream_handler(signal_protocol("test"), serve)


async def connect(peer: Peer, node) -> None:
    await peer.host.connect(Libp2pPeerInfo(node.peer_id, list(node.host.get_addrs())))


async def test_sybil_signalling_nodes_are_not_chosen_nor_displace_established_ones(tmp_path):
    sybils = [Peer(source=f"127.0.{60 + i}.1", listen=True) for i in range(SYBILS)]
    registered: list[bytes] = []
    async with cluster(tmp_path) as c, contextlib.AsyncExitStack() as stack:
        boot = await c.start(**LO)
        public = [await c.start(join=boot, **LO) for _ in range(3)]
        honest = {n.peer_id.to_bytes() for n in [boot, *public]}
        await stack.enter_async_context(running(sybils))
        for sybil in sybils:
            eager_signaling(sybil, registered)
            addr = tuple(a.to_bytes() for a in sybil.host.get_addrs())
            for node in [boot, *public]:  # announced where signalling nodes used to be looked up
                await connect(sybil, node)
                stream = await sybil.host.new_stream(node.peer_id, [kad_protocol("test")])
                await stream.write(frame(encode_message(Message(
                    MessageType.ADD_PROVIDER, key=OLD_SIGNALING_KEY, provider_peers=sybil.provider(addr)))))
                await stream.close()

        hidden = await c.start(join=boot, reachability="private", **LO)
        await wait_for(lambda: len(hidden.signaling.live) == 3, timeout=40, what="three registrations")
        established = set(hidden.signaling.live)
        assert established <= honest - {boot.peer_id.to_bytes()} and not registered, \
            "only verified public nodes are chosen, and the bootstrap only as a fallback"

        # fresh sybils that are proper DHT servers: the public nodes take them into their tables,
        # so the node's own lookups find them, and they are candidates, with no load, some closer
        servers = [Peer(source=f"127.0.{90 + i}.1", listen=True) for i in range(SYBILS)]
        await stack.enter_async_context(running(servers))
        for sybil in servers:
            eager_signaling(sybil, registered)
            sybil.serve_dht("test")
            for node in [boot, *public]:
                await connect(sybil, node)
                stream = FramedStream(await sybil.host.new_stream(node.peer_id, [kad_protocol("test")]), 1 << 20)
                await stream.write(encode_message(Message(MessageType.PING)))
                with trio.fail_after(10):
                    await stream.read()
                await stream.close()
        sybil_ids = {s.id.to_bytes() for s in servers}
        await wait_for(lambda: len(sybil_ids & {c.peer_id for c in boot.core.table.contacts()}) >= 10,
                       what="the public nodes took the sybils into their tables")
        await hidden._find_signaling_nodes()
        assert sybil_ids & {c.peer_id for c in hidden.core.table.contacts()}, "the sybils reached the node's table"
        assert set(hidden.signaling.live) == established and not registered, "established registrations stay"
