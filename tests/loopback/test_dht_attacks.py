"""Hostile peers against a node's DHT stores: each has its own identity and speaks Kademlia's
real wire protocol (ADD_PROVIDER, PUT_VALUE, GET_PROVIDERS) to an `overlay-node run` process on
loopback, whose memory is measured from /proc."""

from __future__ import annotations

import contextlib
import hashlib

import multiaddr
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core.framing import frame
from overlay.channels.relay import members_key
from overlay.core.records import PeerRecord, peer_id_from_public_key, record_key, seal_peer_record
from overlay.kademlia.core import KadConfig
from overlay.kademlia.store import provider_key
from overlay.kademlia.wire import Message, MessageType, Record, decode_message, encode_message
from tests.loopback.hostile import Peer, rss_mib
from tests.loopback.nodeproc import Proc, cli

pytestmark = pytest.mark.timeout(240)

NETWORK = "dht-attacks"
FLOOD = 10_000  # ADD_PROVIDER messages from one identity, each for a new key
ADDRS = 32  # addresses per message, of ADDR_BYTES each: 6.4 KB of addresses per message
ADDR_BYTES = 200
MORE = 20  # records mallory sends beyond its quota
RSS_BOUND_MIB = 16  # the node's growth under the flood: 3.2 MiB measured; unbounded stores grew by 85 MiB


def quota_node(tmp_path) -> Proc:
    """A DHT server whose request rates are lifted, so that a flood reaches the stores' quotas
    (at the default rates a peer is cut off after 100 requests: the last test)."""
    config = tmp_path / "node.toml"
    config.write_text("[dht_limits]\npeer_requests = [100000, 100000]\ngroup_requests = [100000, 100000]\n")
    return Proc(["--dht-mode", "server", "--config", str(config)], tmp_path / "node", network=NETWORK)


def sybil_put() -> Message:
    """PUT_VALUE of a valid peer record, signed by a key made for it."""
    key = Ed25519PrivateKey.generate()
    peer = peer_id_from_public_key(key.public_key())
    value = seal_peer_record(PeerRecord(peer, 1, (multiaddr.Multiaddr("/ip4/198.18.0.9/tcp/4001").to_bytes(),)), key)
    return Message(MessageType.PUT_VALUE, key=record_key(peer), record=Record(record_key(peer), value))


async def test_a_provider_flood_from_one_identity_is_bounded_and_others_still_provide(tmp_path):
    node = quota_node(tmp_path)
    mallory, bob, carol = Peer(), Peer(), Peer()
    try:
        async with mallory.host.run([]), bob.host.run([]), carol.host.run([]):
            for peer in (mallory, bob, carol):
                await peer.connect(node)
            before = rss_mib(node.popen.pid)
            junk = tuple(bytes([i % 256]) * ADDR_BYTES for i in range(ADDRS))
            stream = await mallory.stream(node)
            batch = 100  # frames per write: the flood is the node's work, not ours
            for start in range(0, FLOOD, batch):
                await stream.stream.write(b"".join(
                    frame(encode_message(Message(MessageType.ADD_PROVIDER, key=members_key(f"c{i}"),
                                                 provider_peers=mallory.provider(junk))))
                    for i in range(start, start + batch)))
            # the node serves a stream's messages in order: this answer comes once the flood is handled
            await stream.write(encode_message(Message(MessageType.GET_PROVIDERS, key=members_key("c0"))))
            with trio.fail_after(120):
                held = decode_message(await stream.read()).provider_peers
            grew = rss_mib(node.popen.pid) - before
            assert grew < RSS_BOUND_MIB, f"the node grew by {grew:.1f} MiB under the flood"
            assert node.metric('overlay_dht_refused_total{reason="provider quota"}') == FLOOD - KadConfig.max_providers_per_peer
            assert held and len(held[0].addrs) == KadConfig.max_provider_addrs, "a few of its addresses kept"

            # a legitimate provider is still taken, and found by a third peer
            key = members_key("legitimate")
            bob_addr = multiaddr.Multiaddr("/ip4/198.18.0.7/tcp/4001").to_bytes()
            await (await bob.stream(node)).write(encode_message(
                Message(MessageType.ADD_PROVIDER, key=key, provider_peers=bob.provider((bob_addr,)))))
            with trio.fail_after(30):
                while True:
                    ask = await carol.stream(node)
                    await ask.write(encode_message(Message(MessageType.GET_PROVIDERS, key=key)))
                    answer = decode_message(await ask.read())
                    await ask.close()
                    if answer.provider_peers:
                        break
                    await trio.sleep(0.1)
            assert answer.provider_peers == bob.provider((bob_addr,))

    finally:
        node.stop()


async def test_providers_outside_the_overlays_namespaces_are_refused(tmp_path):
    """Provider records are taken only for what the overlay defines (channel members, Degas
    accounts): a bare hash, or a namespace of the sender's own, is refused, counted, and never
    served to others, so the DHT cannot be used to keep a stranger's data."""
    node = quota_node(tmp_path)
    mallory, carol = Peer(), Peer()
    foreign = [hashlib.sha256(b"/overlay/signaling").digest(), provider_key(b"mallory-files", b"x")]
    try:
        async with mallory.host.run([]), carol.host.run([]):
            for peer in (mallory, carol):
                await peer.connect(node)
            addr = (multiaddr.Multiaddr("/ip4/198.18.0.8/tcp/4001").to_bytes(),)
            stream = await mallory.stream(node)
            for key in [*foreign, members_key("mallory")]:
                await stream.write(encode_message(Message(MessageType.ADD_PROVIDER, key=key, provider_peers=mallory.provider(addr))))
            # the node serves a stream's messages in order: once this is answered, all were handled
            await stream.write(encode_message(Message(MessageType.GET_PROVIDERS, key=members_key("mallory"))))
            with trio.fail_after(30):
                assert decode_message(await stream.read()).provider_peers == mallory.provider(addr), \
                    "a provider of an overlay namespace is taken"
            assert node.metric('overlay_dht_refused_total{reason="provider namespace"}') == len(foreign)
            for key in foreign:
                assert not (await carol.ask(node, Message(MessageType.GET_PROVIDERS, key=key))).provider_peers
    finally:
        node.stop()


async def test_a_record_flood_from_one_identity_stops_at_its_quota_and_others_still_store(tmp_path):
    """Sybil records (each validly signed by a fresh key) sent by one peer: the node stores its
    quota of them, answers the rest as refused, and a legitimate peer's record is still stored."""
    node = quota_node(tmp_path)
    mallory, bob = Peer(), Peer()
    quota = KadConfig.max_records_per_peer
    requests = [sybil_put() for _ in range(quota + 1 + MORE)]
    try:
        async with mallory.host.run([]), bob.host.run([]):
            for peer in (mallory, bob):
                await peer.connect(node)
            stream = await mallory.stream(node)  # one stream, all at once
            await stream.stream.write(b"".join(frame(encode_message(m)) for m in requests))
            with trio.fail_after(60):
                answers = [decode_message(await stream.read()) for _ in requests]
            stored = [a.record == m.record for a, m in zip(answers, requests)]
            assert stored == [True] * quota + [False] * (1 + MORE), "its quota stored, the rest answered as refused"
            assert node.metric('overlay_dht_refused_total{reason="record quota"}') == 1 + MORE
            assert quota <= node.metric("overlay_dht_records") <= quota + 1  # + the node's own record
            assert await bob.put(node, sybil_put()), "another peer's record is stored"
    finally:
        node.stop()


async def test_many_identities_from_one_network_share_its_quota(tmp_path):
    """Sybil identities from one /24, each within its own quota, fill only their network's quota
    of the record store: a peer from another network still stores."""
    node = quota_node(tmp_path)
    per_peer, per_group = KadConfig.max_records_per_peer, KadConfig.max_records_per_group
    sybils = [Peer() for _ in range(per_group // per_peer)]
    late, stranger = Peer(), Peer(source="127.0.1.2")  # the stranger's /24 is another of the loopback network
    try:
        async with contextlib.AsyncExitStack() as stack:
            for peer in [*sybils, late, stranger]:
                await stack.enter_async_context(peer.host.run([]))
                await peer.connect(node)
            for sybil in sybils:  # each its whole quota, on one stream
                requests = [sybil_put() for _ in range(per_peer)]
                stream = await sybil.stream(node)
                await stream.stream.write(b"".join(frame(encode_message(m)) for m in requests))
                with trio.fail_after(60):
                    answers = [decode_message(await stream.read()) for _ in requests]
                assert all(a.record == m.record for a, m in zip(answers, requests))
            assert not await late.put(node, sybil_put()), "a new identity from the same network is refused"
            assert node.metric('overlay_dht_refused_total{reason="record group quota"}') == 1
            assert await stranger.put(node, sybil_put()), "a peer from another network still stores"
    finally:
        node.stop()


async def test_a_peer_asking_faster_than_its_rate_is_cut_off_and_others_are_answered(tmp_path):
    """1,000 FIND_NODE on one stream at once: the node answers a peer's burst (100) and the
    refill, then answers nothing and closes the stream; another peer is answered meanwhile."""
    node = Proc(["--dht-mode", "server"], tmp_path / "node", network=NETWORK)
    mallory, bob = Peer(), Peer()
    burst = KadConfig.peer_requests[1]
    try:
        async with mallory.host.run([]), bob.host.run([]):
            for peer in (mallory, bob):
                await peer.connect(node)
            stream = await mallory.stream(node)
            ask = encode_message(Message(MessageType.FIND_NODE, key=b"k" * 32))
            started = trio.current_time()
            await stream.stream.write(frame(ask) * 1000)
            answered = 0
            with trio.fail_after(60):
                try:
                    while await stream.read() is not None:
                        answered += 1
                except Exception:  # noqa: BLE001 - the stream ends at the first request over the rate
                    pass
            refill = KadConfig.peer_requests[0] * (trio.current_time() - started + 1)
            assert burst <= answered <= burst + refill, f"{answered} of 1,000 answered"
            assert node.metric('overlay_dht_refused_total{reason="rate"}') == 1
            status = cli("status", "--api", node.api, "--data-dir", str(node.data_dir))
            assert "refused:       dht: 1 (rate 1)" in status.stdout, status.stdout + status.stderr
            other = await bob.stream(node)
            await other.write(ask)
            with trio.fail_after(10):
                assert decode_message(await other.read()).type is MessageType.FIND_NODE
    finally:
        node.stop()


async def test_a_routing_table_offered_peers_from_one_network_stays_diverse(tmp_path):
    """30 DHT servers from one /24 and 8 from 8 others ask the node something, so that it pings
    each and takes the ones that answer into its routing table: one network gets at most its 6
    places (2 per bucket), every other network's peer gets in, and a FIND_NODE answer (what the
    node tells others of the network) names at most those 6."""
    node = Proc(["--dht-mode", "server"], tmp_path / "node", network=NETWORK)
    sybils = [Peer(source=f"127.0.5.{i}") for i in range(1, 31)]
    honest = [Peer(source=f"127.0.{10 + i}.1") for i in range(8)]
    observer = Peer(source="127.0.9.1")
    ids = lambda peers: {p.id.to_bytes() for p in peers}  # noqa: E731
    try:
        async with contextlib.AsyncExitStack() as stack:
            for peer in [*sybils, *honest, observer]:
                await stack.enter_async_context(peer.host.run([]))
                peer.serve_dht(NETWORK)
                await peer.connect(node)
            for peer in [*sybils, *honest]:
                await peer.ask(node, Message(MessageType.PING))
            ask = Message(MessageType.FIND_NODE, key=b"k" * 32)
            with trio.fail_after(60):
                while not ids(honest) <= (named := {p.peer_id for p in (await observer.ask(node, ask)).closer_peers}):
                    await trio.sleep(0.2)  # the node pings each asker once; poll until the last answered
            held = named & ids(sybils)
            assert 1 <= len(held) <= KadConfig.table_per_group, f"{len(held)} of one network's peers in the table"
            with trio.fail_after(30):
                while node.metric('overlay_dht_refused_total{reason="table group"}') < len(sybils) - len(held):
                    await trio.sleep(0.2)
            assert node.metric('overlay_dht_refused_total{reason="table group"}') == len(sybils) - len(held)
    finally:
        node.stop()
