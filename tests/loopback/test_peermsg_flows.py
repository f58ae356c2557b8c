"""Typed peer messages (Convex peer messaging) across three real nodes: a query answered with a result that
references it, a belief to every peer once, missing data fetched from the sender, a signed
transaction, STATUS, and a 1 MB message through the 8192-byte frames."""

from __future__ import annotations

import os
import struct

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from overlay.peermsg.core import Code, digest, message, signed_part, transaction, with_refs
from overlay.peermsg.frames import PeerMessageType
from tests.conftest import wait_for
from tests.loopback.nodes import cluster, relay_address_stored


async def next_message(node, tag):
    with trio.fail_after(15):
        async for deliver in node.peermsg.messages:
            if deliver.tag is tag:
                return deliver


async def three(c):
    a = await c.start()
    b = await c.start(join=a)
    d = await c.start(join=a)
    await wait_for(lambda: b.joined.is_set() and d.joined.is_set(), what="joined")
    return a, b, d


async def test_typed_messages_across_three_nodes(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three(c)
        B, D = str(b.peer_id), str(d.peer_id)
        # QUERY answered by a RESULT that references it
        query_id = await a.peermsg.send(D, PeerMessageType.QUERY, with_refs([], b"balance?"))
        query = await next_message(d, PeerMessageType.QUERY)
        assert query.body == b"balance?" and query.peer == str(a.peer_id)
        await d.peermsg.answer(query, Code.OK, b"42")
        result = await next_message(a, PeerMessageType.RESULT)
        ref, code = struct.unpack_from(">QB", result.body)
        assert (ref, code, result.body[9:]) == (query_id, Code.OK, b"42")
        # a BELIEF that needs a value only its sender holds: asked for, fetched, then delivered
        cell = os.urandom(20_000)
        a.peermsg.put(cell)
        await a.peermsg.send(B, PeerMessageType.BELIEF, with_refs([digest(cell)], b"belief 1"))
        belief = await next_message(b, PeerMessageType.BELIEF)
        assert belief.body == b"belief 1" and b.peermsg.core.get(digest(cell)) == cell
        # the same belief again is not delivered twice
        await a.peermsg.send(B, PeerMessageType.BELIEF, with_refs([digest(cell)], b"belief 1"))
        await wait_for(lambda: b.peermsg.core.counters.duplicate_beliefs == 1, what="duplicate counted")
        # a signed TRANSACT, then the same sequence number again
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        body = with_refs([], transaction(raw, 1, b"transfer", key.sign(signed_part(1, b"transfer"))))
        await b.peermsg.send(D, PeerMessageType.TRANSACT, body)
        await next_message(d, PeerMessageType.TRANSACT)
        replay_id = await b.peermsg.send(D, PeerMessageType.TRANSACT, body)
        refused = await next_message(b, PeerMessageType.RESULT)
        assert struct.unpack_from(">QB", refused.body) == (replay_id, Code.SEQUENCE_USED)
        # STATUS from the cache
        d.peermsg.set_status(b"height 7")
        status_id = await b.peermsg.send(D, PeerMessageType.STATUS, b"")
        status = await next_message(b, PeerMessageType.RESULT)
        assert struct.unpack_from(">Q", status.body)[0] == status_id and status.body.endswith(b"height 7")
        # a 1 MB DATA value goes through in frames of at most 8192 bytes
        big = os.urandom(1_000_000)
        await a.peermsg.send(D, PeerMessageType.DATA, big)
        await wait_for(lambda: d.peermsg.core.get(digest(big)) == big, what="1 MB value stored")
        # broadcast: every connected peer, once
        assert await a.peermsg.broadcast(PeerMessageType.BELIEF, with_refs([], b"to all")) >= 2
        for node in (b, d):
            assert (await next_message(node, PeerMessageType.BELIEF)).body == b"to all"


async def test_a_query_to_a_node_reached_only_through_a_relay(tmp_path):
    no_webrtc = {"webrtc_interfaces": ("no-such-interface",)}
    async with cluster(tmp_path) as c:
        boot = await c.start(webrtc_interfaces=("127.0.0.1",))
        hidden = await c.start(join=boot, reachability="private", **no_webrtc)
        # a DHT client: a DHT server would be a signalling candidate the hidden node dials itself
        caller = await c.start(join=boot, dht_mode="client", **no_webrtc)
        await wait_for(lambda: hidden.joined.is_set() and caller.joined.is_set() and relay_address_stored(boot, hidden)(),
                       what="joined, relay address published")
        await caller.host.disconnect(hidden.peer_id)
        await wait_for(lambda: not caller.dialer.connected(hidden.peer_id), what="no direct connection")
        query_id = await caller.peermsg.send(str(hidden.peer_id), PeerMessageType.QUERY, with_refs([], b"via relay?"))
        query = await next_message(hidden, PeerMessageType.QUERY)
        await hidden.peermsg.answer(query, Code.OK, b"yes")
        result = await next_message(caller, PeerMessageType.RESULT)
        assert struct.unpack_from(">QB", result.body) == (query_id, Code.OK) and result.body[9:] == b"yes"
        assert next(p["paths"] for p in caller.peers() if p["peer_id"] == str(hidden.peer_id)) == ["relayed"]


async def test_a_peer_opening_many_streams_holds_one(tmp_path):
    """A stranger opens 50 typed-message streams and sends nothing on them: each new one replaces
    the last, which is reset, or is refused while too many of its streams are still closing
    (the resource manager's cap per peer and protocol), so the node holds one; a message on a
    newer one is delivered."""
    from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

    from overlay.peermsg.frames import encode
    from overlay.transport.host import build_host

    async with cluster(tmp_path) as c:
        a = await c.start()
        stranger = build_host(Ed25519PrivateKey.generate(), [])
        async with stranger.run([]):
            await stranger.connect(Libp2pPeerInfo(a.peer_id, a.host.get_addrs()))
            for _ in range(50):  # held open by our host, silent
                await stranger.new_stream(a.peer_id, [a.peermsg.protocol])
            resources = a.host.resources
            replaced = lambda: a.peermsg.replaced.values.get((), 0)  # noqa: E731
            await wait_for(lambda: replaced() + resources.refused["streams-protocol"] == 49, what="49 replaced or refused")
            await wait_for(lambda: resources.protocol_streams(stranger.get_id(), a.peermsg.protocol) == 1,
                           what="the replaced streams' handlers ended")
            assert list(a.peermsg._inbound) == [str(stranger.get_id())]
            before = replaced()
            newest = await stranger.new_stream(a.peer_id, [a.peermsg.protocol])  # after the others' handlers ran
            await wait_for(lambda: replaced() == before + 1, what="the last one replaced")
            for frame in encode(*message(PeerMessageType.BELIEF, 1, with_refs([], b"still heard")), 1):
                await newest.write(frame)
            assert (await next_message(a, PeerMessageType.BELIEF)).body == b"still heard"


async def test_a_silent_stream_is_closed_and_messages_after_a_pause_still_arrive(tmp_path, monkeypatch):
    """With a 1 s idle timeout: a stranger's silent stream is closed, and a node that paused
    longer than that still reaches its peer (it drops its own unused stream first)."""
    from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

    from overlay.peermsg import service
    from overlay.transport.host import build_host

    monkeypatch.setattr(service, "IDLE_TIMEOUT", 1.0)
    async with cluster(tmp_path) as c:
        a, b, _ = await three(c)
        stranger = build_host(Ed25519PrivateKey.generate(), [])
        async with stranger.run([]):
            await stranger.connect(Libp2pPeerInfo(a.peer_id, a.host.get_addrs()))
            await stranger.new_stream(a.peer_id, [a.peermsg.protocol])
            # counted when the idle timeout fires; the stream leaves `_inbound` once its reset is done
            await wait_for(lambda: a.peermsg.idle_closed.values.get((), 0) == 1
                           and str(stranger.get_id()) not in a.peermsg._inbound, what="the silent stream closed")
        for body in (b"before", b"after a pause"):
            await b.peermsg.send(str(a.peer_id), PeerMessageType.BELIEF, with_refs([], body))
            assert (await next_message(a, PeerMessageType.BELIEF)).body == body
            await trio.sleep(1.5)  # longer than the idle timeout: what is tested
