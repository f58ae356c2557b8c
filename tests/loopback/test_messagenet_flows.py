"""MessageNet relayers across three real nodes: every send operation, delivery reports,
signatures, held messages for relayers that are away, and bad frames."""

from __future__ import annotations

import base64
import json
import time

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import overlay.messagenet.service as service
from overlay.node.api import serve_api
from overlay.messagenet import relayer
from overlay.channels.inm import BROADCAST, Inm, new_nonce
from overlay.core.framing import frame
from overlay.core.records import peer_id_from_public_key, peer_id_to_str
from tests.conftest import wait_for
from tests.loopback.nodes import cluster, open_api_websocket, relay_address_stored, three_nodes

B64 = lambda data: base64.b64encode(data).decode()
NOBODY = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"


async def start(c, join=None, **overrides):
    node = await c.start(join=join, api=("127.0.0.1", 0), **overrides)
    url = await c.nursery.start(serve_api, node)
    node.relayer_url = url.replace("http://", "ws://") + "/relayer"
    return node


class Relayer:
    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, action: int, **body) -> None:
        await self.ws.send_message(bytes([action]) + json.dumps(body).encode())

    async def next(self, kind: int) -> dict:
        with trio.fail_after(15):
            while True:
                frame = await self.ws.get_message()
                if frame[0] == kind:
                    return json.loads(frame[1:])


class registered_relayer:
    def __init__(self, node, *ids: int) -> None:
        self.cm, self.ids = open_api_websocket(node, node.relayer_url), ids

    async def __aenter__(self) -> Relayer:
        rel = Relayer(await self.cm.__aenter__())
        for relayer_id in self.ids:
            await rel.send(relayer.REGISTER, relayer_id=relayer_id)
        return rel

    async def __aexit__(self, *exc) -> None:
        await self.cm.__aexit__(*exc)


async def test_every_send_operation_across_three_nodes(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        A = str(a.peer_id)
        async with registered_relayer(a, 7) as ra, registered_relayer(b, 7) as rb, registered_relayer(d, 7, 8) as rd:
            await wait_for(lambda: all(7 in n.relayers.known for n in (a, b, d)), what="registrations")
            # SendToValidator, with its delivery report
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=7, node_id=str(d.peer_id), raw_data=B64(b"\x00to d"), id=1)
            assert await rd.next(relayer.SEND_TO_CLIENT) == {"relayer_id": 7, "node_id": A, "data": B64(b"\x00to d")}
            assert await ra.next(relayer.DELIVERY) == {"id": 1, "ok": True}
            # to a relayer ID the node never saw, and to a node that does not exist
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=99, node_id=str(b.peer_id), raw_data=B64(b"x"), id=2)
            assert await ra.next(relayer.DELIVERY) == {"id": 2, "ok": False, "error": "no such relayer"}
            # SendToPeers: every other node's relayer 7, once
            await ra.send(relayer.SEND_TO_PEERS, relayer_id=7, raw_data=B64(b"all"))
            for rel in (rb, rd):
                assert (await rel.next(relayer.SEND_TO_CLIENT))["data"] == B64(b"all")
            # SignAndSendToValidator: the relayer gets a SignedMessage it can check against the sender
            await ra.send(relayer.SIGN_AND_SEND_TO_VALIDATOR, relayer_id=8, node_id=str(d.peer_id), identification_byte=5,
                          msg_bytes=B64(b"attest"), id=3)
            got = await rd.next(relayer.SEND_TO_CLIENT)
            signed = relayer.verify(base64.b64decode(got["data"]))
            assert (signed.unsigned, signed.sender, signed.recipient) == (b"\x05attest", a.peer_id.to_bytes(), d.peer_id.to_bytes())
            assert await ra.next(relayer.DELIVERY) == {"id": 3, "ok": True}
            # SignAndSendToPeers
            await ra.send(relayer.SIGN_AND_SEND_TO_PEERS, relayer_id=7, identification_byte=1, msg_bytes=B64(b"vote"))
            for rel in (rb, rd):
                signed = relayer.verify(base64.b64decode((await rel.next(relayer.SEND_TO_CLIENT))["data"]))
                assert (signed.unsigned, signed.sender, signed.recipient) == (b"\x01vote", a.peer_id.to_bytes(), None)
            # nothing arrived twice
            with trio.move_on_after(0.5):
                frame = await rb.ws.get_message()
                pytest.fail(f"unexpected frame {frame[:40]!r}")


async def test_an_unreachable_peer_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(service, "UNICAST_TIMEOUT", 2.0)
    async with cluster(tmp_path) as c:
        a = await start(c)
        async with registered_relayer(a, 1) as ra:
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=1, node_id=NOBODY, raw_data=B64(b"x"), id=9)
            assert await ra.next(relayer.DELIVERY) == {"id": 9, "ok": False, "error": "peer unreachable"}


async def test_messages_wait_for_a_relayer_that_is_away_then_expire_counted(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with registered_relayer(d, 4):
            await wait_for(lambda: 4 in d.relayers.relayers, what="registered")
        await wait_for(lambda: 4 not in d.relayers.relayers, what="gone")
        async with registered_relayer(a, 4) as ra:
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=4, node_id=str(d.peer_id), raw_data=B64(b"later"), id=1)
            assert await ra.next(relayer.DELIVERY) == {"id": 1, "ok": True}
        async with registered_relayer(d, 4) as back:
            assert (await back.next(relayer.SEND_TO_CLIENT))["data"] == B64(b"later")
        d.relayers.hold = 0.0  # held messages now expire at once
        d.relayers._deliver(str(a.peer_id), {"relayer_id": 4, "data": B64(b"gone"), "signed": False})
        d.relayers._deliver(str(a.peer_id), {"relayer_id": 4, "data": B64(b"gone2"), "signed": False})
        assert d.relayers.dropped.get(reason="held too long") >= 1


async def test_bad_signatures_and_bad_frames_are_refused_and_the_socket_stays(tmp_path):
    async with cluster(tmp_path) as c:
        a = await start(c)
        svc = a.relayers
        key = Ed25519PrivateKey.generate()  # not NOBODY's key
        forged = relayer.sign(key, relayer.new_message(b"\x01x", peer_id_from_public_key(key.public_key()), a.peer_id.to_bytes(), 3, time.time()))
        svc.known.add(3)
        answer = svc._deliver(NOBODY, {"relayer_id": 3, "data": B64(forged), "signed": True})
        assert answer == {"ok": False, "error": "not from its signer"} and svc.dropped.get(reason="not from its signer") == 1
        body = json.loads(forged)
        body["unsignedMessage"] = B64(b"\x01y")
        answer = svc._deliver(peer_id_to_str(peer_id_from_public_key(key.public_key())), {"relayer_id": 3, "data": B64(json.dumps(body).encode()), "signed": True})
        assert answer == {"ok": False, "error": "bad signature"} and svc.dropped.get(reason="bad signature") == 1
        assert svc._deliver(NOBODY, {"relayer_id": "3", "data": "!", "signed": False})["error"] == "malformed"
        async with registered_relayer(a, 3) as ra:
            await ra.ws.send_message("text is not for relayers")
            assert (await ra.next(relayer.ERROR)) == {"error": "binary frames only"}
            await ra.ws.send_message(b"\x42{}")
            assert (await ra.next(relayer.ERROR)) == {"error": "unknown dispatch byte 0x42"}
            await ra.send(relayer.REGISTER, relayer_id="x")
            assert "relayer_id must be an integer" in (await ra.next(relayer.ERROR))["error"]
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=3, node_id=str(a.peer_id), raw_data=B64(b"self"), id=5)
            assert (await ra.next(relayer.SEND_TO_CLIENT))["data"] == B64(b"self")
            assert await ra.next(relayer.DELIVERY) == {"id": 5, "ok": True}


async def test_a_node_reached_only_through_a_relay(tmp_path):
    """The hidden node says it is behind NAT and gathers no WebRTC candidate, so the only path
    to it is its signalling node's relay, and MessageNet runs over that."""
    no_webrtc = {"webrtc_interfaces": ("no-such-interface",)}
    async with cluster(tmp_path) as c:
        boot = await start(c, webrtc_interfaces=("127.0.0.1",))
        hidden = await start(c, join=boot, reachability="private", **no_webrtc)
        # a DHT client: a DHT server would be a signalling candidate the hidden node dials itself
        caller = await start(c, join=boot, dht_mode="client", **no_webrtc)
        await wait_for(lambda: hidden.joined.is_set() and caller.joined.is_set() and relay_address_stored(boot, hidden)(),
                       what="joined, relay address published")
        await caller.host.disconnect(hidden.peer_id)
        await wait_for(lambda: not caller.dialer.connected(hidden.peer_id), what="no direct connection")
        async with registered_relayer(caller, 2) as rc, registered_relayer(hidden, 2) as rh:
            await wait_for(lambda: 2 in hidden.relayers.known, what="registered")
            await rc.send(relayer.SEND_TO_VALIDATOR, relayer_id=2, node_id=str(hidden.peer_id), raw_data=B64(b"via relay"), id=1)
            assert (await rh.next(relayer.SEND_TO_CLIENT))["data"] == B64(b"via relay")
            assert await rc.next(relayer.DELIVERY) == {"id": 1, "ok": True}
            paths = next(p["paths"] for p in caller.peers() if p["peer_id"] == str(hidden.peer_id))
            assert paths == ["relayed"]


async def test_a_peer_replaying_a_signed_message_gets_it_refused(tmp_path):
    """b, a node with its own identity, captures a's signed broadcast and unicast (as its relayer
    received them) and sends them again to d over its real INM link. Claiming a as their source,
    they are refused before MessageNet sees them (a first hop must come from its source, and an
    envelope passed on must carry its source's signature), as is an unsigned message in a's
    name, and a broadcast without b's signature even as b's own; the unicast sent as b's own,
MessageNet refuses (not from its signer). d's relayer sees
    each message once."""
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with registered_relayer(a, 7) as ra, registered_relayer(b, 7) as rb, registered_relayer(d, 7) as rd:
            await wait_for(lambda: all(7 in n.relayers.known for n in (a, b, d)), what="registrations")
            await wait_for(lambda: {str(b.peer_id), str(d.peer_id)} <= set(a.channels.neighbours())
                           and str(d.peer_id) in b.channels.neighbours(), what="INM links between all three")
            await ra.send(relayer.SIGN_AND_SEND_TO_PEERS, relayer_id=7, identification_byte=1, msg_bytes=B64(b"vote"))
            broadcast = (await rb.next(relayer.SEND_TO_CLIENT))["data"]
            assert relayer.verify(base64.b64decode((await rd.next(relayer.SEND_TO_CLIENT))["data"])).unsigned == b"\x01vote"
            await ra.send(relayer.SIGN_AND_SEND_TO_VALIDATOR, relayer_id=7, node_id=str(b.peer_id), identification_byte=2,
                          msg_bytes=B64(b"for b"), id=1)
            unicast = (await rb.next(relayer.SEND_TO_CLIENT))["data"]

            link = b.channels.links[str(d.peer_id)]
            for source in (str(a.peer_id), str(b.peer_id)):
                for destination, command, data in ((BROADCAST, service.BROADCAST, broadcast), (str(d.peer_id), service.DELIVER, unicast)):
                    body = {"command": command, "relayer_id": 7, "data": data, "signed": True}
                    link.queue.put(frame(Inm(source, destination, "command", new_nonce(), body).encode()))
            unsigned = {"command": service.DELIVER, "relayer_id": 7, "data": B64(b"\x01from a, says b"), "signed": False}
            link.queue.put(frame(Inm(str(a.peer_id), str(d.peer_id), "command", new_nonce(), unsigned).encode()))
            link.wake.set()
            # an unsigned broadcast is refused even from its source: every broadcast is passed on, so signed
            await wait_for(lambda: d.channels.dropped.get(reason="unauthenticated source") == 4
                           and d.relayers.dropped.get(reason="not from its signer") == 1, what="refusals counted")
            with trio.move_on_after(0.5):
                got = await rd.ws.get_message()
                pytest.fail(f"the relayer got a replayed message {got[:60]!r}")


async def test_a_message_too_large_for_an_inm_envelope_is_refused_with_its_size_at_once(tmp_path):
    """A signed message whose msg_bytes fit a relayer frame but whose SignedMessage, in base64,
    does not fit an INM envelope: the relayer is told so at once (a unicast in its delivery
    report, a broadcast in an error frame) instead of waiting for a report of `peer unreachable`."""
    async with cluster(tmp_path) as c:
        a = await start(c)
        b = await start(c, join=a)
        await wait_for(lambda: b.joined.is_set(), what="join")
        async with registered_relayer(a, 1) as ra, registered_relayer(b, 1) as rb:
            await wait_for(lambda: 1 in a.relayers.known and 1 in b.relayers.known, what="registrations")
            big = B64(b"x" * 150_000)  # 200,000 bytes in the frame; its SignedMessage in base64, some 267,000
            await ra.send(relayer.SIGN_AND_SEND_TO_VALIDATOR, relayer_id=1, node_id=str(b.peer_id), identification_byte=1,
                          msg_bytes=big, id=5)
            report = await ra.next(relayer.DELIVERY)
            assert report["id"] == 5 and not report["ok"] and "too large" in report["error"]
            await ra.send(relayer.SIGN_AND_SEND_TO_PEERS, relayer_id=1, identification_byte=1, msg_bytes=big)
            assert "too large" in (await ra.next(relayer.ERROR))["error"]
            assert a.relayers.dropped.get(reason="too large") == 2
            await ra.send(relayer.SEND_TO_VALIDATOR, relayer_id=1, node_id=str(b.peer_id), raw_data=big, id=6)
            assert (await rb.next(relayer.SEND_TO_CLIENT))["data"] == big, "the same bytes raw fit"
            assert await ra.next(relayer.DELIVERY) == {"id": 6, "ok": True}
