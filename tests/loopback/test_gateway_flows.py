"""The Degas gateway on real nodes: a client on one node and the service instance on
another (and behind a relay), authentication over the socket, the size boundary, unknown and gone
instances, gone clients, text frames, pings, and impostor nodes; and hostile peers (their own
identity, the real DHT and INM protocols) claiming to host a degas_id, replaying captured,
expired and lasting proofs, and announcing an account they do not serve."""

from __future__ import annotations

import base64
import functools
import hashlib
import sys
import time
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_account.messages import encode_defunct
from trio_websocket import ConnectionClosed

from overlay.channels.inm import Inm, new_nonce
from overlay.node.api import serve_api
from overlay.gateway import degas_pb2 as pb
from overlay.core.protobuf import field_bytes
from overlay.gateway.hosts import DOMAIN, HostRecord, host_key, open_host_record, seal_host_record
from overlay.gateway.proofs import EXPIRED, OTHER_NODE, PROOF_TTL, REPLAYED, SKEW, TOO_LONG, Proof
from overlay.gateway.service import FORWARD, TO_CLIENT, Socket, account_key
from overlay.gateway.session import MAX_PAYLOAD, ClientSession, Code, recover_address
from tests.conftest import wait_for
from tests.loopback.nodes import cluster, open_api_websocket, relay_address_stored, three_nodes
from tests.unit.test_gateway_codec import ACCOUNT, DEGAS, OTHER, degas, hello, sign

B64 = lambda data: base64.b64encode(data).decode()
ACCOUNT_ID = bytes.fromhex(ACCOUNT.address[2:])


async def start(c, join=None, **overrides):
    node = await c.start(join=join, api=("127.0.0.1", 0), **overrides)
    url = await c.nursery.start(serve_api, node)
    node.ws = url.replace("http://", "ws://")
    return node


async def receive(ws, kind: type):
    message = kind()
    with trio.fail_after(15):
        message.ParseFromString(await ws.get_message())
    return message


class client:
    """An authenticated client connection on `node`."""

    def __init__(self, node, account=ACCOUNT) -> None:
        self.cm, self.account = open_api_websocket(node, node.ws + "/gateway"), account

    async def __aenter__(self):
        ws = await self.cm.__aenter__()
        await ws.send_message(hello(self.account))
        challenge = (await receive(ws, pb.GatewayMessage)).auth_request.ethereum_auth.challenge
        await ws.send_message(sign(challenge, self.account))
        assert (await receive(ws, pb.GatewayMessage)).WhichOneof("payload") == "auth_ok"
        return ws

    async def __aexit__(self, *exc) -> None:
        await self.cm.__aexit__(*exc)


class instance:
    """A service instance on `node`, registered as `degas_id`."""

    def __init__(self, node, degas_id: bytes = DEGAS) -> None:
        self.cm, self.degas_id = open_api_websocket(node, node.ws + "/service"), degas_id

    async def __aenter__(self):
        ws = await self.cm.__aenter__()
        await ws.send_message(pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=self.degas_id)).SerializeToString())
        assert (await receive(ws, pb.GatewayInternalMessage)).registered.degas_id == self.degas_id
        return ws

    async def __aexit__(self, *exc) -> None:
        await self.cm.__aexit__(*exc)


def to_client(account_id: bytes, payload: bytes) -> bytes:
    return pb.DegasMessage(degas_to_client=pb.DegasToClientMessage(account_id=account_id, payload=payload)).SerializeToString()


def announced(node, key: bytes):
    return lambda: node.core.providers.get(key, trio.current_time(), 20)


def hosted(node, degas_id: bytes = DEGAS, host=None):
    """Whether `node`'s DHT store holds a claim of `degas_id` (by `host`, when given)."""
    def check() -> bool:
        value = node.core.records.get(host_key(degas_id), trio.current_time())
        record = open_host_record(value) if value is not None else None
        return record is not None and not record.released and (host is None or record.host == host.peer_id_bytes)
    return check


def refusals(node) -> dict[str, float]:
    """The gateway's dropped messages by reason."""
    return {dict(labels).get("reason", ""): n for labels, n in node.gateway.dropped.values.items()}


async def test_round_trips_between_a_client_and_an_instance_on_other_nodes(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service, client(a) as player:
            await wait_for(lambda: any(hosted(n)() for n in (a, b)), what="instance announced")
            # the instance speaks first: the DHT tells its node where the account is connected
            await wait_for(lambda: any(announced(n, account_key(ACCOUNT_ID))() for n in (b, d)), what="account announced")
            await service.send_message(to_client(ACCOUNT_ID, b"welcome"))
            assert (await receive(player, pb.GatewayMessage)).degas.payload == b"welcome"
            for payload in (b"hello", b"\x07" * MAX_PAYLOAD):
                await player.send_message(degas(payload))
                forward = (await receive(service, pb.GatewayInternalMessage)).client_message
                assert (forward.account_id, forward.payload) == (ACCOUNT_ID, payload)
                await service.send_message(to_client(ACCOUNT_ID, payload[::-1]))
                back = (await receive(player, pb.GatewayMessage)).degas
                assert (back.degas_id, back.payload) == (DEGAS, payload[::-1])
            # one byte over: an error to the client, and the connection goes on
            await player.send_message(degas(b"x" * (MAX_PAYLOAD + 1)))
            assert (await receive(player, pb.GatewayMessage)).error.code == Code.PAYLOAD_TOO_LARGE
            await player.send_message(degas(b"in order 1"))
            await player.send_message(degas(b"in order 2"))
            for expected in (b"in order 1", b"in order 2"):
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == expected
            # the instance's node refused nothing
            assert refusals(d) == {}
            await player.ping(b"p")  # RFC 6455 control frames are answered


async def test_unknown_and_gone_instances_and_gone_clients_get_clear_errors(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with client(a) as player:
            await player.send_message(degas(b"anyone?", degas_id=b"U" * 16))
            error = (await receive(player, pb.GatewayMessage)).error
            assert (error.code, error.degas_id) == (Code.UNKNOWN_DEGAS, b"U" * 16)
            async with instance(d) as service:
                await wait_for(lambda: any(hosted(n)() for n in (a, b)), what="instance announced")
                await player.send_message(degas(b"one"))
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"one"
            await wait_for(lambda: DEGAS not in d.gateway.instances, what="instance gone")
            await player.send_message(degas(b"two"))
            assert (await receive(player, pb.GatewayMessage)).error.code == Code.DEGAS_GONE
        await wait_for(lambda: not a.gateway.clients, what="client gone")
        async with instance(d) as service:
            await service.send_message(to_client(ACCOUNT_ID, b"still there?"))
            error = (await receive(service, pb.GatewayInternalMessage)).error
            assert (error.code, error.account_id) == (Code.CLIENT_GONE, ACCOUNT_ID)
            # bad frames from an instance: an error each, and the socket goes on
            await service.send_message(b"\xff\xff")
            assert (await receive(service, pb.GatewayInternalMessage)).error.code == Code.MALFORMED
            await service.send_message(to_client(ACCOUNT_ID, b"x" * (MAX_PAYLOAD + 1)))
            assert (await receive(service, pb.GatewayInternalMessage)).error.code == Code.PAYLOAD_TOO_LARGE
            await service.send_message(pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=b"E" * 16)).SerializeToString())
            assert (await receive(service, pb.GatewayInternalMessage)).error.code == Code.MALFORMED
            async with open_api_websocket(d, d.ws + "/service") as twin:
                await twin.send_message(pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=DEGAS)).SerializeToString())
                assert (await receive(twin, pb.GatewayInternalMessage)).error.code == Code.DEGAS_ID_TAKEN


async def test_socket_level_refusals_close_with_a_reason_and_others_are_served(tmp_path):
    async with cluster(tmp_path) as c:
        a = await start(c)
        async with instance(a) as service, client(a) as player:
            for frame, code, close in ((degas(b"early"), Code.NOT_AUTHENTICATED, 1008), ("text", Code.MALFORMED, 1002),
                                       (hello(account_id=bytes.fromhex(OTHER.address[2:])), Code.AUTH_FAIL, 1008)):
                async with open_api_websocket(a, a.ws + "/gateway") as ws:
                    await ws.send_message(frame)
                    assert (await receive(ws, pb.GatewayMessage)).error.code == code
                    with pytest.raises(ConnectionClosed) as closed:
                        await receive(ws, pb.GatewayMessage)
                    assert closed.value.reason.code == close
            # a signature replayed from another connection
            async with open_api_websocket(a, a.ws + "/gateway") as first, open_api_websocket(a, a.ws + "/gateway") as second:
                for ws in (first, second):
                    await ws.send_message(hello())
                challenge = (await receive(first, pb.GatewayMessage)).auth_request.ethereum_auth.challenge
                await receive(second, pb.GatewayMessage)
                await second.send_message(sign(challenge))
                assert (await receive(second, pb.GatewayMessage)).error.code == Code.AUTH_FAIL
            # the authenticated client was served all along
            await player.send_message(degas(b"still here"))
            assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"still here"


async def test_nodes_cannot_speak_for_accounts_or_instances_they_do_not_host(tmp_path):
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service, client(a) as player:
            await wait_for(lambda: any(hosted(n)() for n in (a, b)), what="instance announced")
            # b claims a's client, with a proof made for a: refused
            challenge, signature = a.gateway.clients[ACCOUNT_ID].copy().pop().session.proof
            b.channels.notify(str(d.peer_id), {"command": FORWARD, "degas_id": B64(DEGAS), "account_id": B64(ACCOUNT_ID),
                                                "payload": B64(b"forged"), "challenge": challenge, "signature": B64(signature),
                                                "seq": 1})
            await wait_for(lambda: d.gateway.dropped.get(reason=OTHER_NODE) == 1, what="forward refused")
            # b replays the captured proof in a's name, over its own link to d: refused before the
            # gateway sees it (an envelope is believed only from its source, or signed by it)
            forward = {"command": FORWARD, "degas_id": B64(DEGAS), "account_id": B64(ACCOUNT_ID),
                       "payload": B64(b"send all funds to b"), "challenge": challenge, "signature": B64(signature), "seq": 1}
            b.channels.send(Inm(str(a.peer_id), str(d.peer_id), "command", new_nonce(), forward))
            await wait_for(lambda: d.channels.dropped.get(reason="unauthenticated source") == 1, what="replay in a's name refused")
            # b claims to host the instance: its message to the client is refused
            b.channels.notify(str(a.peer_id), {"command": TO_CLIENT, "degas_id": B64(DEGAS), "account_id": B64(ACCOUNT_ID),
                                                "payload": B64(b"forged")})
            await wait_for(lambda: a.gateway.dropped.get(reason="not the instance's host") == 1, what="to-client refused")
            await service.send_message(to_client(ACCOUNT_ID, b"genuine"))
            assert (await receive(player, pb.GatewayMessage)).degas.payload == b"genuine"


async def test_an_instance_whose_node_is_reached_only_through_a_relay(tmp_path):
    """The instance's node says it is behind NAT and gathers no WebRTC candidate, so the only
    path the gateway has to it is its signalling node's relay."""
    no_webrtc = {"webrtc_interfaces": ("no-such-interface",)}
    async with cluster(tmp_path) as c:
        boot = await start(c, webrtc_interfaces=("127.0.0.1",))
        hidden = await start(c, join=boot, reachability="private", **no_webrtc)
        # a DHT client: a DHT server would be a signalling candidate the hidden node dials itself
        gateway = await start(c, join=boot, dht_mode="client", **no_webrtc)
        await wait_for(lambda: hidden.joined.is_set() and gateway.joined.is_set() and relay_address_stored(boot, hidden)(),
                       what="joined, relay address published")
        async with instance(hidden) as service:
            await wait_for(hosted(boot), what="instance announced")
            await gateway.host.disconnect(hidden.peer_id)
            await wait_for(lambda: not gateway.dialer.connected(hidden.peer_id), what="no direct connection")
            async with client(gateway) as player:
                await player.send_message(degas(b"via relay"))
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"via relay"
                paths = next(p["paths"] for p in gateway.peers() if p["peer_id"] == str(hidden.peer_id))
                assert paths == ["relayed"]
                # the way back: over the relay, or a connection the hidden node opens (outbound is allowed)
                await service.send_message(to_client(ACCOUNT_ID, b"back"))
                assert (await receive(player, pb.GatewayMessage)).degas.payload == b"back"



async def test_the_examples_make_a_round_trip_between_two_nodes(tmp_path):
    """As the README runs them: the example service on one node, the example client on another."""
    root = Path(__file__).resolve().parents[2]
    async with cluster(tmp_path) as c:
        a = await start(c)
        b = await start(c, join=a)
        await wait_for(lambda: b.joined.is_set(), what="joined")
        api = lambda node: node.ws.removeprefix("ws://")
        async with trio.open_nursery() as nursery:
            service = functools.partial(trio.run_process, [sys.executable, str(root / "examples/degas_service.py"),
                                                           "--api", api(b), "--data-dir", str(b.config.data_dir), "--count", "1"], capture_stdout=True)
            served = await nursery.start(_finished, service)
            await wait_for(lambda: b.gateway.instances, what="example service registered")
            await wait_for(hosted(a, bytes.fromhex("00112233445566778899aabbccddeeff")), what="announced")
            with trio.fail_after(60):
                done = await trio.run_process([sys.executable, str(root / "examples/degas_client.py"), "--api", api(a),
                                               "--data-dir", str(a.config.data_dir), "hello overlay"], capture_stdout=True)
        out = done.stdout.decode()
        assert "authenticated as 0x" in out and "00112233445566778899aabbccddeeff: HELLO OVERLAY" in out
        assert "b'hello overlay'" in served[0].stdout.decode()


async def _finished(run, task_status=trio.TASK_STATUS_IGNORED):
    result: list = []
    task_status.started(result)
    with trio.fail_after(90):
        result.append(await run())


# ---- a hostile peer: its own identity, the real DHT and INM protocols ----


class Lying:
    """A DHT validator that takes anything, the newest first: a hostile node's store, which
    answers every GET_VALUE with whatever it was last given."""

    def validate(self, key: bytes, value: bytes) -> None:
        pass

    def select(self, key: bytes, values: list[bytes]) -> int:
        return len(values) - 1


async def lie(node, degas_id: bytes, value: bytes) -> None:
    """`node` keeps `value` as the host record of `degas_id` and puts it to the closest stores."""
    node.core.records.validator = Lying()
    with trio.fail_after(15):
        await node.dht.put_value(host_key(degas_id), value)
    assert node.core.records.get(host_key(degas_id), trio.current_time()) == value


def forward(proof: tuple[str, bytes], payload: bytes, seq: int, degas_id: bytes = DEGAS) -> dict:
    challenge, signature = proof
    return {"command": FORWARD, "degas_id": B64(degas_id), "account_id": B64(ACCOUNT_ID), "payload": B64(payload),
            "challenge": challenge, "signature": B64(signature), "seq": seq}


def proof_of(node) -> tuple[str, bytes]:
    """The proof of the one client connection at `node`."""
    (sock,) = node.gateway.clients[ACCOUNT_ID]
    return sock.session.proof


async def test_a_node_announcing_itself_as_host_of_anothers_degas_id_is_ignored(tmp_path):
    """b claims d's degas_id every way it can: an instance of its own under it (a fresh claim,
    after d's), the provider record that used to name hosts, a claim signed by b and backdated
    before d's that b's own store then serves, and for a degas_id nobody hosts, an unsigned
    record naming b. The gateway believes only d's signed claim (most stores hold it), so the
    client's messages reach d's instance and none reaches b; b's messages to the client are
    refused; each refusal is counted."""
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service:
            await wait_for(lambda: all(hosted(n, host=d)() for n in (a, b, d)), what="d's claim stored everywhere")
            claimed = open_host_record(d.core.records.get(host_key(DEGAS), trio.current_time()))
            async with instance(b) as fake:  # b's own gateway claims it too, later: refused
                error = (await receive(fake, pb.GatewayInternalMessage)).error
                assert (error.code, error.degas_id) == (Code.DEGAS_ID_TAKEN, DEGAS)
            with trio.fail_after(15):  # what made gateways send to b before: a provider record
                await b.dht.provide(hashlib.sha256(b"/overlay/degas/instance/" + DEGAS).digest())
            backdated = seal_host_record(HostRecord(DEGAS, b.peer_id_bytes, claimed.at - 60_000), b.key)
            await lie(b, DEGAS, backdated)
            assert all(hosted(n, host=d)() for n in (a, d)), "the honest stores kept the settled claim"
            async with client(a) as player:
                for payload in (b"secret", b"send all funds to X"):
                    await player.send_message(degas(payload))
                    assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == payload
                assert len(b.gateway.proofs) == 0, "no forward reached b"
                assert a.gateway.dropped.get(reason="host record outvoted") >= 1
                b.channels.notify(str(a.peer_id), {"command": TO_CLIENT, "degas_id": B64(DEGAS), "account_id": B64(ACCOUNT_ID),
                                                    "payload": B64(b"forged")})
                await wait_for(lambda: a.gateway.dropped.get(reason="not the instance's host") == 1, what="to-client refused")
                await service.send_message(to_client(ACCOUNT_ID, b"genuine"))
                assert (await receive(player, pb.GatewayMessage)).degas.payload == b"genuine"
                # degas_ids nobody hosts, announced for b unsigned, or signed by a key not b's: not believed
                for nobody, signer in ((b"N" * 16, None), (b"M" * 16, Ed25519PrivateKey.generate())):
                    claim = HostRecord(nobody, b.peer_id_bytes, int(time.time() * 1000)).payload()
                    signature = signer.sign(DOMAIN + claim) if signer else bytes(64)
                    rejected = a.core.counters.records_rejected
                    await lie(b, nobody, field_bytes(1, claim) + field_bytes(2, signature))
                    await player.send_message(degas(b"anyone?", degas_id=nobody))
                    assert (await receive(player, pb.GatewayMessage)).error.code == Code.UNKNOWN_DEGAS
                    assert len(b.gateway.proofs) == 0, "no forward reached b"
                    assert a.core.counters.records_rejected > rejected


async def test_a_captured_proof_replayed_by_another_node_after_the_client_left_is_refused(tmp_path):
    """The client wrote to d's instance through a; b got hold of the proof (as a fake host would
    have) and, once the client has gone, hands it to d in its own name: refused, since the proof
    names a; in a's name the envelope itself is refused. A message a already forwarded, handed
    over again, is refused too."""
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service:
            await wait_for(lambda: hosted(a, host=d)(), what="instance announced")
            async with client(a) as player:
                await player.send_message(degas(b"hello"))
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"hello"
                captured = proof_of(a)
            await wait_for(lambda: not a.gateway.clients, what="client gone")
            for seq in (1, 2, 1000):
                b.channels.notify(str(d.peer_id), forward(captured, b"send all funds to b", seq))
            await wait_for(lambda: d.gateway.dropped.get(reason=OTHER_NODE) == 3, what="replays refused")
            b.channels.send(Inm(str(a.peer_id), str(d.peer_id), "command", new_nonce(), forward(captured, b"send all funds to b", 2)))
            await wait_for(lambda: d.channels.dropped.get(reason="unauthenticated source") == 1, what="replay in a's name refused")
            a.channels.notify(str(d.peer_id), forward(captured, b"hello", 1))  # a message delivered once already
            await wait_for(lambda: d.gateway.dropped.get(reason=REPLAYED) == 1, what="repeated message refused")
            async with client(a) as player:  # nothing of the above reached the instance
                await player.send_message(degas(b"next"))
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"next"
            assert refusals(d) == {OTHER_NODE: 3, REPLAYED: 1}


async def test_an_expired_or_lasting_proof_is_refused(tmp_path):
    """b was the account's gateway; the client left, and b keeps its proof. Once the proof has
    expired at d (d's clock moved on past PROOF_TTL and the skew), d refuses what b forwards with
    it. Nor does d take a proof the account was made to sign with an expiry far ahead."""
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service:
            await wait_for(lambda: hosted(b, host=d)(), what="instance announced")
            async with client(b) as player:
                await player.send_message(degas(b"hello"))
                assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"hello"
                kept = proof_of(b)
            d.gateway.wall = lambda: time.time() + PROOF_TTL + SKEW + 1
            b.channels.notify(str(d.peer_id), forward(kept, b"send all funds to b", 2))
            await wait_for(lambda: d.gateway.dropped.get(reason=EXPIRED) == 1, what="expired proof refused")
            d.gateway.wall = time.time
            lasting = Proof(str(b.peer_id), ACCOUNT_ID, None, b"\x07" * 32, int(time.time() + 30 * 86400)).text()
            signature = bytes(ACCOUNT.sign_message(encode_defunct(text=lasting)).signature)
            b.channels.notify(str(d.peer_id), forward((lasting, signature), b"send all funds to b", 1))
            await wait_for(lambda: d.gateway.dropped.get(reason=TOO_LONG) == 1, what="lasting proof refused")
            b.channels.notify(str(d.peer_id), forward(kept, b"still good", 3))  # the control: before expiry it is good
            assert (await receive(service, pb.GatewayInternalMessage)).client_message.payload == b"still good"
            assert refusals(d) == {EXPIRED: 1, TOO_LONG: 1}


async def test_an_account_is_believed_at_a_node_only_with_its_proof_naming_that_node(tmp_path):
    """The instance writes first to an account connected at a. b announces the account too (a
    provider record) and, asked for its proof, shows the one it captured from a: the instance's
    node refuses it (it names a), so the message goes to a only."""
    async with cluster(tmp_path) as c:
        a, b, d = await three_nodes(start, c)
        async with instance(d) as service, client(a) as player:
            captured = proof_of(a)
            with trio.fail_after(15):
                await b.dht.provide(account_key(ACCOUNT_ID))
            liar = ClientSession(str(b.peer_id), recover_address)
            liar.proof, liar.proof_expires = captured, time.time() + PROOF_TTL
            b.gateway.clients[ACCOUNT_ID] = {Socket(trio.open_memory_channel[bytes](1)[0], liar)}
            await wait_for(lambda: any(len(announced(n, account_key(ACCOUNT_ID))()) == 2 for n in (a, b, d)),
                           what="both announcements stored")
            await service.send_message(to_client(ACCOUNT_ID, b"welcome"))
            assert (await receive(player, pb.GatewayMessage)).degas.payload == b"welcome"
            assert d.gateway.routes[ACCOUNT_ID] == {str(a.peer_id)}, "the message went to a only"
            assert d.gateway.dropped.get(reason=OTHER_NODE) == 1
