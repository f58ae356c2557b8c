"""One fuzz harness per decoder that faces the network or a client, and the errors it declares.

A harness takes the fuzzer's bytes, decodes them as its message (and, where a state machine
consumes the result, feeds it to a fresh one), and lets through only the decoder's declared
error types: any other exception is a crash. `tests/fuzz/run.py` drives a harness under atheris
(coverage-guided); `tests/unit/test_fuzz_regressions.py` replays every committed input (the
seed corpus and each input that once crashed) without it, so the cores' venv runs them too.

The seeds are valid messages made by our own encoders (`seeds()`), written into
`tests/fuzz/corpus/<name>/` by `python -m tests.fuzz.run --write-seeds`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core.errors import DecodeError, RecordError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRASHES = HERE / "crashes"
SPLIT = b"\n--\n"  # how the stateful harnesses cut one input into several messages
MAX_PIECES = 8


@dataclass(frozen=True)
class Harness:
    name: str
    target: Callable[[bytes], object]
    errors: tuple[type[BaseException], ...]  # what the decoder declares; anything else is a crash
    seeds: Callable[[], list[bytes]]
    doc: str

    def __call__(self, data: bytes) -> None:
        try:
            self.target(data)
        except self.errors:
            pass

    def inputs(self) -> Iterator[tuple[Path, bytes]]:
        """The committed inputs: the seed corpus and the crash regressions."""
        for folder in (CORPUS / self.name, CRASHES / self.name):
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not path.name.startswith("."):
                        yield path, path.read_bytes()


HARNESSES: dict[str, Harness] = {}


def harness(errors: tuple[type[BaseException], ...], seeds: Callable[[], list[bytes]]):
    def register(target: Callable[[bytes], object]) -> Callable[[bytes], object]:
        name = target.__name__.removeprefix("fuzz_")
        HARNESSES[name] = Harness(name, target, errors, seeds, (target.__doc__ or "").strip())
        return target
    return register


def pieces(data: bytes) -> list[bytes]:
    return data.split(SPLIT, MAX_PIECES)[:MAX_PIECES]


@cache
def _keys() -> tuple[Ed25519PrivateKey, ...]:
    # Fixed keys, so that the seeds (and what the fuzzer derives from them) stay valid.
    return tuple(Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(1, 4))


@cache
def _ids() -> tuple[str, ...]:
    from overlay.core.records import peer_id_from_public_key, peer_id_to_str
    return tuple(peer_id_to_str(peer_id_from_public_key(k.public_key())) for k in _keys())


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- channel relay (WSRelay): INM envelopes between nodes, client frames ------------------------

def _inm_seeds() -> list[bytes]:
    from overlay.channels.inm import Inm, sign
    a, b, _ = _ids()
    plain = Inm(a, b, "command", "n1", {"command": "list-channels"})
    signed = Inm(a, "*", "message", "n2", {"command": "channel-message", "channel": "ch", "message": "hi"}, at=1_000)
    signed = Inm(signed.source, signed.destination, signed.type, signed.nonce, signed.data, 1_000, sign(_keys()[0], signed))
    scoped = Inm(a, "*", "command", "n3", {"command": "node-stats"}, scope=3, tree=1)
    return [plain.encode(), signed.encode(), scoped.encode(), Inm(b, a, "response", "n1", {"channels": []}).encode()]


@harness((DecodeError,), _inm_seeds)
def fuzz_inm(data: bytes) -> None:
    """An INM envelope from a neighbour: `inm.decode`."""
    from overlay.channels import inm
    inm.decode(data)


def _relay_seeds() -> list[bytes]:
    from overlay.channels.inm import Inm
    a, b, _ = _ids()
    hello = _json({"command": "handshake", "data": {"name": a}})
    commands = [Inm(a, "me", "command", f"c{i}", data).encode() for i, data in enumerate((
        {"command": "list-nodes"}, {"command": "list-channels"}, {"command": "node-stats"},
        {"command": "get-connection-token", "node": b}, {"command": "get-node-connection", "node": b},
        {"command": "channel-join", "channel": "ch"}, {"command": "channel-graft", "channel": "ch"},
        {"command": "channel-ihave", "channel": "ch", "have": [[a, 1000, 1]]},
        {"command": "channel-iwant", "channel": "ch", "want": [[a, 1000, 1]]},
        {"command": "channel-prune", "channel": "ch"}, {"command": "channel-leave", "channel": "ch"},
        {"command": "broadcast-attach"}))]
    message = Inm(a, "+", "message", "m1", {"channel": "ch", "epoch": 1000, "seq": 1, "message": "hi", "nonce": "x"}).encode()
    response = Inm(a, "me", "response", "c0", {"ok": True}).encode()
    return [hello + SPLIT + SPLIT.join(commands[:6]), hello + SPLIT + SPLIT.join(commands[6:]),
            hello + SPLIT + message + SPLIT + response]


@harness((), _relay_seeds)
def fuzz_channel_relay(data: bytes) -> None:
    """Envelopes a neighbour sends a node's channel relay: the link's handshake first, then INMs
    it received (as its own, from the neighbour's stream) and the relay's timers; the relay must
    handle every one without raising."""
    from overlay.channels.inm import decode
    from overlay.channels.relay import ChannelRelay
    from overlay.channels.reservation import Reservation

    relay = ChannelRelay("me", lambda: 1_000_000, lambda inm: "tag", lambda inm: inm.sig == "tag",
                         lambda r: Reservation(r.channel, r.owner, r.at, r.verifier, r.released, "tag"),
                         lambda r: r.sig == "tag")
    items = pieces(data)
    peer = _ids()[0]
    relay.accept_handshake(peer, items[0], 0.0)
    relay.link_up(peer, 0.0)
    for i, raw in enumerate(items[1:], 1):
        try:
            envelope = decode(raw)
        except DecodeError:
            continue
        relay.receive(envelope, envelope.source, float(i))
    relay.tick(100.0)


def _client_seeds() -> list[bytes]:
    return [_json({"command": c, "nonce": "1", "data": d}) for c, d in (
        ("subscribe", {"channel": "ch"}), ("subscribe", {"channel": "ch", "password": "pw"}),
        ("send", {"channel": "ch", "message": "hello"}), ("unsubscribe", {"topic": "ch"}), ("list", {}))]


@harness((), _client_seeds)
def fuzz_channel_client(data: bytes) -> None:
    """A channel client's WebSocket frame: `client.decode_request`, whose ClientError is the
    answer the client gets (it is part of the decoder's contract, so it is caught here)."""
    from overlay.channels.client import ClientError, decode_request
    for frame in (data, data.decode("utf-8", "replace")):
        try:
            decode_request(frame)
        except ClientError:
            pass


def _reservation_seeds() -> list[bytes]:
    from overlay.channels.reservation import Reservation, sign
    key, owner = _keys()[0], _ids()[0]
    return [sign(key, Reservation("ch", owner, 1_000)).encode(), sign(key, Reservation("ch", owner, 2_000, "ab" * 32, True)).encode()]


@harness((DecodeError,), _reservation_seeds)
def fuzz_reservation(data: bytes) -> None:
    """A channel reservation found in the DHT: `reservation.decode`, then its signature check."""
    from overlay.channels import reservation
    reservation.verify(reservation.decode(data))


# ---- signalling and relay control messages ------------------------------------------------------

def _signaling_seeds() -> list[bytes]:
    from signaling import messages as m
    a, b, _ = _ids()
    return [m.encode(x) for x in (
        m.Register(), m.Registered(60), m.Load(), m.Load(3), m.Ping(), m.Pong(),
        m.Signal("s1", "offer", {"sdp": "v=0"}, to=b), m.Signal("s1", "answer", {"sdp": "v=0"}, sender=a),
        m.Error("rate-limited", "slow down", "s1"), m.Connect(b, persistent=True), m.Incoming(a, m.Limit(1 << 17, 120)),
        m.Accepted(), m.Connected(m.Limit(rate=4096)))]


@harness((DecodeError,), _signaling_seeds)
def fuzz_signaling(data: bytes) -> None:
    """A signalling or relay control message: `signaling.messages.decode`."""
    from signaling import messages
    messages.decode(data)


def _server_seeds() -> list[bytes]:
    from signaling import messages as m
    a, b, _ = _ids()
    s = _signaling_seeds()
    return [b"\x00" + m.encode(m.Register()) + SPLIT + b"\x01" + m.encode(m.Signal("x", "offer", {"sdp": "v=0"}, to=a))
            + SPLIT + b"\x00" + m.encode(m.Signal("x", "answer", {"sdp": "v=0"}, to=b)) + SPLIT + b"\x00" + m.encode(m.Ping()),
            SPLIT.join(b"\x01" + x for x in s)]


@harness((), _server_seeds)
def fuzz_signaling_server(data: bytes) -> None:
    """Messages on two streams of the signalling server (the first byte of each piece picks the
    stream): the server answers or refuses each, and never raises."""
    from signaling import messages
    from signaling.server import SignalingServer
    server = SignalingServer()
    a, b, _ = _ids()
    server.opened(0, a, 0.0, "198.18.0.1")
    server.opened(1, b, 0.0, "198.18.0.2")
    for i, raw in enumerate(pieces(data)):
        if not raw:
            continue
        stream = raw[0] & 1
        try:
            msg = messages.decode(raw[1:])
        except DecodeError as e:
            server.bad_input(stream, "bad-message", str(e))
            continue
        server.message(stream, msg, float(i))
    server.handle_timer(1_000.0)
    server.closed(0, 1_000.0)
    server.closed(1, 1_000.0)


# ---- NAT: STUN, NAT-PMP, PCP, dial-back, LAN announcements, WebRTC ------------------------------

def _stun_seeds() -> list[bytes]:
    from nat import stun
    tid = bytes(range(12))
    return [stun.encode_binding_request(tid), stun.encode_binding_request(tid, change_ip=True, change_port=True),
            stun.encode_binding_success(tid, ("198.18.0.5", 4242), response_origin=("198.18.0.1", 3478)),
            stun.encode_binding_success(tid, ("2001:db8::5", 4242)), stun.encode_error_response(tid, 420, "unknown")]


@harness((DecodeError,), _stun_seeds)
def fuzz_stun(data: bytes) -> None:
    """A STUN message from a server or a peer: `nat.stun.decode`."""
    from nat import stun
    stun.decode(data)


def _natpmp_seeds() -> list[bytes]:
    return [struct.pack(">BBHI4s", 0, 128, 0, 7, bytes([198, 18, 0, 1])), struct.pack(">BBHIHHI", 0, 129, 0, 7, 4001, 4001, 7200),
            struct.pack(">BBHIHHI", 0, 130, 0, 7, 4001, 40001, 7200), struct.pack(">BBHI", 0, 130, 3, 7)]


def _portmap_errors() -> tuple[type[BaseException], ...]:
    from nat.gateway import PortMapError
    return (DecodeError, PortMapError)


@harness(_portmap_errors(), _natpmp_seeds)
def fuzz_natpmp(data: bytes) -> None:
    """A gateway's NAT-PMP answer: `nat.natpmp.decode_response`."""
    from nat import natpmp
    natpmp.decode_response(data)


def _pcp_seeds() -> list[bytes]:
    header = struct.pack(">BBBBII", 2, 0x81, 0, 0, 7200, 9) + bytes(12)
    body = bytes(range(12)) + struct.pack(">B3xHH", 6, 4001, 40001) + bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 1])
    return [header + body, struct.pack(">BBBBII", 2, 0x81, 0, 2, 0, 9) + bytes(12), struct.pack(">BBHI", 0, 0x80, 1, 0)]


@harness(_portmap_errors(), _pcp_seeds)
def fuzz_pcp(data: bytes) -> None:
    """A gateway's PCP answer to MAP: `nat.pcp.decode_map_response`."""
    from nat import pcp
    pcp.decode_map_response(data)


def _dialback_seeds() -> list[bytes]:
    return [_json({"ports": [["tcp", 4001], ["ws", 4002]]}),
            _json({"observed": "198.18.0.5", "results": [["tcp", 4001, True], ["ws", 4002, False]]})]


@harness((DecodeError,), _dialback_seeds)
def fuzz_dialback(data: bytes) -> None:
    """A reachability dial-back request and answer: `nat.reachability.decode_request/response`."""
    from nat import reachability
    for decode in (reachability.decode_request, reachability.decode_response):
        try:
            decode(data)
        except DecodeError:
            pass


def _lan_seeds() -> list[bytes]:
    import multiaddr
    from nat.lan import encode_txt
    return [encode_txt(_ids()[0], "net", [multiaddr.Multiaddr("/ip4/198.18.0.5/tcp/4001"),
                                          multiaddr.Multiaddr("/ip6/2001:db8::5/tcp/4002/ws")])]


def _lan_errors() -> tuple[type[BaseException], ...]:
    from nat.lan import AnnouncementError
    return (AnnouncementError,)


@harness(_lan_errors(), _lan_seeds)
def fuzz_lan(data: bytes) -> None:
    """A LAN neighbour's mDNS TXT record: `nat.lan.decode_txt`."""
    from nat.lan import decode_txt
    decode_txt(data)


def _webrtc_seeds() -> list[bytes]:
    description = {"ufrag": "abcd", "pwd": "a" * 24, "fingerprints": ["sha-256 " + ":".join(["AB"] * 32)],
                   "candidates": ["candidate:1 1 udp 2130706431 198.18.0.5 40000 typ host"]}
    return [b"\x00" + _json(description), b"\x01" + bytes([0]) + b"data", b"\x01" + bytes([1]) + struct.pack(">I", 65536),
            b"\x01" + bytes([2])]


@harness((DecodeError,), _webrtc_seeds)
def fuzz_webrtc(data: bytes) -> None:
    """A remote WebRTC description (first byte 0: `parse_description` of the JSON) or a
    data-channel frame (first byte 1: `webrtc_stream.decode_frame`)."""
    from nat.webrtc_description import parse_description
    from nat.webrtc_stream import decode_frame
    from overlay.core.jsonwire import loads
    if data[:1] == b"\x00":
        parse_description(loads(data[1:], "description"))
    elif data[:1] == b"\x01":
        decode_frame(data[1:])


# ---- Kademlia and signed records ----------------------------------------------------------------

def _kad_seeds() -> list[bytes]:
    from overlay.core.records import PeerRecord, record_key, seal_peer_record
    from overlay.kademlia.wire import Message, MessageType, PeerInfo, Record, encode_message
    key = _keys()[0]
    from overlay.core.records import peer_id_from_public_key
    pid = peer_id_from_public_key(key.public_key())
    import multiaddr
    addr = multiaddr.Multiaddr("/ip4/198.18.0.5/tcp/4001").to_bytes()
    envelope = seal_peer_record(PeerRecord(pid, 1, (addr,)), key)
    peer = PeerInfo(pid, (addr,))
    return [encode_message(m) for m in (
        Message(MessageType.FIND_NODE, pid), Message(MessageType.PING),
        Message(MessageType.PUT_VALUE, record_key(pid), Record(record_key(pid), envelope)),
        Message(MessageType.GET_VALUE, record_key(pid), closer_peers=(peer,)),
        Message(MessageType.ADD_PROVIDER, b"/provider/ch", provider_peers=(peer,)),
        Message(MessageType.GET_PROVIDERS, b"/provider/ch"))]


@harness((), _kad_seeds)
def fuzz_kademlia(data: bytes) -> None:
    """A Kademlia request from a peer: `wire.decode_message` (DecodeError resets the stream),
    then the DHT core answers it with the node's own validators and never raises."""
    from overlay.core.records import PeerRecordValidator, peer_id_from_public_key
    from overlay.kademlia.core import Kademlia
    from overlay.kademlia.store import NamespacedValidator
    from overlay.kademlia.wire import PeerInfo, decode_message
    try:
        message = decode_message(data)
    except DecodeError:
        return
    me, them = (PeerInfo(peer_id_from_public_key(k.public_key())) for k in _keys()[1:])
    node = Kademlia(me, NamespacedValidator({b"peer": PeerRecordValidator()}))
    node.handle_request(them, message, 0.0, group="198.18")


def _record_seeds() -> list[bytes]:
    import multiaddr
    from overlay.core.records import PeerRecord, peer_id_from_public_key, seal_peer_record
    key = _keys()[0]
    addrs = tuple(multiaddr.Multiaddr(a).to_bytes() for a in ("/ip4/198.18.0.5/tcp/4001", "/ip6/2001:db8::5/tcp/4002/ws"))
    return [seal_peer_record(PeerRecord(peer_id_from_public_key(key.public_key()), 7, addrs), key)]


@harness((RecordError,), _record_seeds)
def fuzz_peer_record(data: bytes) -> None:
    """A signed peer record (from a lookup or a PUT): `open_peer_record`, unwrapped from its
    cache so that every input is verified."""
    from overlay.core.records import open_peer_record
    open_peer_record.__wrapped__(data)


def _host_seeds() -> list[bytes]:
    from overlay.core.records import peer_id_from_public_key
    from overlay.gateway.hosts import HostRecord, seal_host_record
    key = _keys()[0]
    host = peer_id_from_public_key(key.public_key())
    return [seal_host_record(HostRecord(bytes(16), host, 1_000), key), seal_host_record(HostRecord(bytes(16), host, 2_000, True), key)]


@harness((RecordError,), _host_seeds)
def fuzz_host_record(data: bytes) -> None:
    """A Degas host record found in the DHT: `hosts.open_host_record`, unwrapped from its cache."""
    from overlay.gateway.hosts import open_host_record
    open_host_record.__wrapped__(data)


# ---- Convex typed peer messages -----------------------------------------------------------------

def _peermsg_seeds() -> list[bytes]:
    from overlay.peermsg.core import with_refs
    from overlay.peermsg.frames import PeerMessageType, encode
    frames = []
    for tag, body in ((PeerMessageType.STATUS, b""), (PeerMessageType.DATA, with_refs([], b"value")),
                      (PeerMessageType.QUERY, with_refs([bytes(32)], b"query")), (PeerMessageType.RESULT, struct.pack(">QB", 1, 0)),
                      (PeerMessageType.DATA, with_refs([], b"x" * 70_000))):
        frames.append(b"".join(encode(tag, body, 5)))
    return [b"".join(frames[:4]), frames[4]]


@harness((DecodeError,), _peermsg_seeds)
def fuzz_peer_messages(data: bytes) -> None:
    """A typed peer-message stream: `frames.FrameReader` (DecodeError closes the stream), fed in
    two chunks, each completed message to the `PeerMessages` core, which counts what it refuses."""
    from overlay.peermsg.core import PeerMessages
    from overlay.peermsg.frames import FrameReader
    reader, core = FrameReader(max_message=1 << 20, max_buffered=2 << 20), PeerMessages()
    cut = len(data) // 2
    for chunk in (data[:cut], data[cut:]):
        for tag, payload in reader.feed(chunk):
            core.on_message(_ids()[0], tag, payload, 0.0)
    core.tick(1_000.0)


def _app_seeds() -> list[bytes]:
    b64 = base64.b64encode(b"body").decode()
    return [_json({"op": "register", "types": ["QUERY", "DATA"]}), _json({"op": "send", "peer": _ids()[0], "type": "QUERY", "body": b64}),
            _json({"op": "broadcast", "type": "DATA", "body": b64}),
            _json({"op": "answer", "peer": _ids()[1], "ref": 3, "code": "OK", "result": b64})]


@harness((DecodeError,), _app_seeds)
def fuzz_peer_messages_api(data: bytes) -> None:
    """An application's frame on the peer-message API: `peermsg.app.decode_app`."""
    from overlay.peermsg.app import decode_app
    decode_app(data)


# ---- Degas client gateway -----------------------------------------------------------------------

def _degas_seeds() -> list[bytes]:
    from overlay.gateway import degas_pb2 as pb
    address = "0x" + "ab" * 20
    hello = pb.ClientMessage(hello=pb.ClientHelloMessage(account_id=bytes.fromhex(address[2:]),
                                                         ethereum_signer=pb.EthereumSingerMessage(address=address)))
    auth = pb.ClientMessage(eth_auth=pb.ClientEthAuthMessage(signature=b"\x01" * 65))
    degas = pb.ClientMessage(degas=pb.ClientDegasMessage(degas_id=bytes(16), payload=b"payload"))
    register = pb.DegasMessage(register=pb.DegasRegisterMessage(degas_id=bytes(16)))
    to_client = pb.DegasMessage(degas_to_client=pb.DegasToClientMessage(account_id=bytes(20), payload=b"x"))
    return [SPLIT.join(m.SerializeToString() for m in (hello, auth, degas, degas)),
            b"\x00" + register.SerializeToString(), b"\x00" + to_client.SerializeToString()]


@harness((), _degas_seeds)
def fuzz_degas(data: bytes) -> None:
    """Degas protobuf frames: from a client, the pieces go to a fresh `ClientSession` (hello,
    auth, messages; the signature check always passes, so the fuzzer reaches READY); from an
    instance (first byte 0), `parse_degas`. Neither may raise but ValueError from `parse_degas`."""
    from overlay.gateway.session import ClientSession, parse_degas
    if data[:1] == b"\x00":
        try:
            parse_degas(data[1:])
        except ValueError:
            pass
        return
    session = ClientSession("me", lambda text, signature: "0x" + "ab" * 20, nonces=lambda: bytes(32))
    for i, frame in enumerate(pieces(data)):
        session.on_frame(frame, float(i))


def _proof_seeds() -> list[bytes]:
    from overlay.gateway.proofs import Proof
    return [Proof(_ids()[0], bytes(20), None, bytes(32), 1_000).text().encode(),
            Proof(_ids()[0], bytes(20), frozenset({bytes(16)}), bytes(32), 1_000).text().encode()]


@harness((ValueError,), _proof_seeds)
def fuzz_degas_proof(data: bytes) -> None:
    """A Degas login proof's text, as another gateway forwards it: `proofs.parse_proof`."""
    from overlay.gateway.proofs import parse_proof
    parse_proof(data.decode("utf-8", "replace"))


# ---- MessageNet relayers ------------------------------------------------------------------------

def _messagenet_seeds() -> list[bytes]:
    from overlay.messagenet import relayer
    b64 = base64.b64encode(b"data").decode()
    frames = [b"\x01" + _json({"relayer_id": 1}), b"\x02" + _json({"relayer_id": 1, "node_id": _ids()[0], "raw_data": b64}),
              b"\x03" + _json({"relayer_id": 1, "raw_data": b64, "id": 9}),
              b"\x04" + _json({"relayer_id": 1, "node_id": _ids()[0], "identification_byte": 7, "msg_bytes": b64})]
    from overlay.core.records import peer_id_from_public_key
    sender, recipient = (peer_id_from_public_key(k.public_key()) for k in _keys()[:2])
    signed = [relayer.sign(_keys()[0], relayer.SignedMessage(b"\x07m", sender, to, 1, 1_000, bytes(16))) for to in (recipient, None)]
    return frames + [b"\xff" + s for s in signed]


@harness((DecodeError,), _messagenet_seeds)
def fuzz_messagenet(data: bytes) -> None:
    """A relayer's frame to the node (`relayer.decode_request`), or (first byte 0xff) a
    SignedMessage from another node (`relayer.verify`)."""
    from overlay.messagenet import relayer
    if data[:1] == b"\xff":
        relayer.verify(data[1:])
    else:
        relayer.decode_request(data)


# ---- shared framing -----------------------------------------------------------------------------

def _framing_seeds() -> list[bytes]:
    from overlay.core.framing import frame
    return [frame(b"hello") + frame(b"") + frame(b"x" * 300), frame(b"y" * 5000)[:100]]


@harness((DecodeError,), _framing_seeds)
def fuzz_framing(data: bytes) -> None:
    """Varint-length-prefixed frames (Kademlia, channel links, signalling streams):
    `framing.FrameDecoder`, fed in three chunks."""
    from overlay.core.framing import FrameDecoder
    decoder = FrameDecoder(4096)
    third = max(1, len(data) // 3)
    for start in range(0, len(data), third):
        decoder.feed(data[start:start + third], max_frames=4)
