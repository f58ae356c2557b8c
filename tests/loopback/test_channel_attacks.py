"""Hostile peers against channels: each has its own identity and speaks the real wire protocols
(INM streams, Kademlia PUT_VALUE), on loopback, against nodes running in this process."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo

from overlay.channels import reservation
from overlay.channels.inm import MEMBERS, Inm, decode, new_nonce
from overlay.channels.reservation import SETTLE, Reservation, reservation_key
from overlay.core.framing import frame
from overlay.kademlia.io import kad_protocol
from overlay.kademlia.wire import Message, MessageType, Record, encode_message
from overlay.transport.framed import FramedStream
from overlay.transport.host import build_host
from tests.conftest import wait_for
from tests.loopback.nodes import cluster
from tests.loopback.test_channel_flows import OK, client, neighbours, start

pytestmark = pytest.mark.timeout(120)


class Stranger:
    """A peer of our own making: its key, a libp2p host, and what nodes send it on INM."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.host = build_host(self.key, [])
        self.name = str(self.host.get_id())
        self.received: list[bytes] = []  # raw INM frames nodes sent us

    def sign(self, r: Reservation) -> Reservation:
        return reservation.sign(self.key, r)

    async def put(self, node, key: bytes, value: bytes) -> None:
        """PUT_VALUE over the node's Kademlia protocol, as any DHT peer may."""
        stream = await self.host.new_stream(node.peer_id, [kad_protocol("test")])
        await stream.write(frame(encode_message(Message(MessageType.PUT_VALUE, key=key, record=Record(key, value)))))
        with trio.move_on_after(5):
            try:
                await stream.read(65536)
            except Exception:  # noqa: BLE001 - a refused record resets the stream
                pass
        await stream.reset()

    async def link(self, node):
        """Our INM stream to `node`, handshake sent; its stream back to us is read into `received`."""
        async def on_stream(stream) -> None:
            framed = FramedStream(stream, max_size=256 * 1024 + 16)
            while (raw := await framed.read()) is not None:
                self.received.append(raw)

        self.host.set_stream_handler(node.channels.protocol, on_stream)
        await self.host.connect(Libp2pPeerInfo(node.peer_id, node.host.get_addrs()))
        stream = await self.host.new_stream(node.peer_id, [node.channels.protocol])
        await stream.write(frame(json.dumps({"command": "handshake", "data": {"name": self.name}}).encode()))
        return stream

    def envelopes(self) -> list[Inm]:
        """Every frame but the node's hellos: one starts each of its link streams, and a link that
        failed (a write timing out on a loaded machine, say) is opened again with a new one."""
        return [decode(raw) for raw in self.received if json.loads(raw).get("command") != "handshake"]


def recording(node) -> list[Inm]:
    """The envelopes `node`'s relay receives from now on (as they come off its streams)."""
    got: list[Inm] = []
    original = node.channels.relay.receive

    def receive(inm, came_from, now):
        got.append(inm)
        return original(inm, came_from, now)

    node.channels.relay.receive = receive
    return got


async def two_nodes(c):
    a = await start(c)
    b = await start(c, join=a)
    await wait_for(lambda: neighbours(a, b), what="INM link a-b")
    return a, b


async def test_a_backdated_reservation_or_a_strangers_release_takes_no_channel(tmp_path):
    """The audit's hijack: `reserve-channel` with a backdated `at` evicted the subscribers of two
    nodes, and a non-owner's `unreserve-channel` freed the name everywhere. Now a stranger puts its
    own signed reservations (backdated far, and just before the honest one once that settled) and
    its release straight into both nodes' DHT stores, and sends both commands: nothing changes."""
    async with cluster(tmp_path) as c:
        a, b = await two_nodes(c)
        mallory = Stranger()
        async with client(a) as c1, client(b) as c2, mallory.host.run([]):
            assert (await c1.call("subscribe", topic="vault", password="pw"))["data"] == OK
            assert (await c2.call("subscribe", topic="vault", password="pw"))["data"] == OK
            honest = a.channels.table.reservation("vault")
            await wait_for(lambda: time.time() * 1000 > honest.at + SETTLE * 1000, timeout=SETTLE + 5,
                           what="the honest reservation settled on every store")
            key = reservation_key("vault")
            now_ms = int(time.time() * 1000)
            records = [mallory.sign(Reservation("vault", mallory.name, at, "")) for at in (1, honest.at - 1, now_ms)]
            records.append(mallory.sign(Reservation("vault", mallory.name, now_ms, "", released=True)))
            forged_release = Reservation("vault", honest.owner, now_ms, honest.verifier, released=True, sig=records[0].sig)
            await mallory.host.connect(Libp2pPeerInfo(a.peer_id, a.host.get_addrs()))
            await mallory.host.connect(Libp2pPeerInfo(b.peer_id, b.host.get_addrs()))
            for node in (a, b):
                for record in [*records, forged_release]:
                    await mallory.put(node, key, record.encode())
            stream = await mallory.link(a)
            for record in records:
                command = "unreserve-channel" if record.released else "reserve-channel"
                await stream.write(frame(Inm(mallory.name, str(a.peer_id), "command", new_nonce(),
                                             {"command": command, **record.to_json()}).encode()))
            await wait_for(lambda: sum(1 for e in mallory.envelopes() if e.type == "response"
                                       and isinstance(e.data, dict) and "reason" in e.data) >= len(records),
                           what="every command answered")
            refusals = {e.data["reason"] for e in mallory.envelopes() if e.type == "response" and "reason" in e.data}
            assert refusals == {"channel already reserved", "channel still open"}
            for node in (a, b):
                assert reservation.decode(node.core.records.get(key, trio.current_time())) == honest
                assert node.channels.table.reservation("vault") == honest
            assert a.core.counters.records_rejected >= 1, "the forged release is invalid, the rest refused"
            async with client(b) as c3:
                assert (await c3.call("subscribe", topic="vault", password="pw"))["data"] == OK, "the password still works"
                assert (await c1.call("send", channel="vault", message="still ours"))["data"] == OK
                assert (await c2.next())["data"] == {"channel": "vault", "message": "still ours"}
                assert (await c3.next())["data"] == {"channel": "vault", "message": "still ours"}


async def test_a_stranger_without_the_password_reads_nothing_and_injects_nothing(tmp_path):
    """The audit's read and injection: a peer took the hash from list-reserved-channels, announced
    the password channel open in its own name and received its messages, and its own `message`
    envelopes reached the subscribers. Now it learns only a verifier, cannot join the channel's
    members without the key (so it receives nothing of it), and what it sends is refused and
    counted, even a sealed box it got hold of."""
    async with cluster(tmp_path) as c:
        a, b = await two_nodes(c)
        eve = Stranger()
        async with client(a) as c1, client(b) as c2, eve.host.run([]):
            assert (await c1.call("subscribe", topic="vault", password="correct horse"))["data"] == OK
            assert (await c2.call("subscribe", topic="vault", password="correct horse"))["data"] == OK
            await wait_for(lambda: a.channels.table.members("vault") == [str(b.peer_id)], what="a and b are members")
            stream = await eve.link(a)
            ask = Inm(eve.name, str(a.peer_id), "command", new_nonce(), {"command": "list-reserved-channels"})
            joins = [Inm(eve.name, str(a.peer_id), "command", new_nonce(), {"command": "channel-join", "channel": "vault", **proof})
                     for proof in ({}, {"proof": "0" * 64})]
            await stream.write(b"".join(frame(inm.encode()) for inm in [ask, *joins]))
            await wait_for(lambda: all(any(e.nonce == inm.nonce for e in eve.envelopes()) for inm in [ask, *joins]),
                           what="the listing and the joins answered")
            for join in joins:
                [answer] = [e.data for e in eve.envelopes() if e.nonce == join.nonce]
                assert answer == {"ok": False, "reason": "invalid password"}
            assert a.channels.table.members("vault") == [str(b.peer_id)]
            [listing] = [e.data for e in eve.envelopes() if e.nonce == ask.nonce]
            stretched = hashlib.pbkdf2_hmac("sha256", b"correct horse", b"vault", 32768).hex()
            assert "password" not in json.dumps(listing) and stretched not in json.dumps(listing)

            at_b = recording(b)
            assert (await c1.call("send", channel="vault", message="top secret"))["data"] == OK
            assert (await c2.next())["data"] == {"channel": "vault", "message": "top secret"}
            assert not any(e.type == "message" for e in eve.envelopes()), "nothing of the channel reaches eve"
            # what b received is a sealed box: eve, had she got hold of it, could neither read it...
            [box] = [inm for inm in at_b if inm.type == "message"]
            assert set(box.data) == {"channel", "epoch", "seq", "sealed"} and b"top secret" not in json.dumps(box.data).encode()

            dropped = a.channels.dropped.get(reason="unauthentic channel message")
            order = {"epoch": 1, "seq": 1}
            forged = [{"channel": "vault", **order, "sealed": base64.b64encode(b"\0" * 64).decode()},
                      {**box.data, **order},  # a's own box, replayed under eve's name
                      {"channel": "vault", **order, "message": "send all funds to X", "nonce": "x"}]
            await stream.write(b"".join(frame(Inm(eve.name, MEMBERS, "message", new_nonce(), data).encode())
                                        for data in forged))
            await wait_for(lambda: a.channels.dropped.get(reason="unauthentic channel message") == dropped + 3,
                           what="every forged message refused")
            assert (await c2.call("send", channel="vault", message="genuine"))["data"] == OK
            assert (await c1.next())["data"] == {"channel": "vault", "message": "genuine"}, "nothing forged came first"
