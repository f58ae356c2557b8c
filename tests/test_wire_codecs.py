"""Decoders facing the network: Kademlia messages, framing, signed peer records.

Round trips, limits, property tests on arbitrary input, and interop with py-libp2p's own
protobuf classes and envelope code (an independent implementation of the same formats).
"""

from __future__ import annotations

import multiaddr
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.pb import kademlia_pb2
from libp2p.peer.envelope import consume_envelope, seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord as Libp2pPeerRecord

from overlay.errors import DecodeError, RecordError
from overlay.kademlia import wire
from overlay.kademlia.wire import FrameDecoder, Message, MessageType, PeerInfo, Record, decode_message, encode_message, frame
from overlay.protobuf import decode_varint, encode_varint
from overlay.records import (
    PeerRecord,
    PeerRecordValidator,
    open_peer_record,
    peer_id_from_public_key,
    peer_id_from_str,
    peer_id_to_str,
    public_key_from_peer_id,
    record_key,
    seal_peer_record,
)

small = st.binary(max_size=64)
peers = st.builds(PeerInfo, st.binary(min_size=1, max_size=40), st.lists(small, max_size=4).map(tuple), st.integers(0, 3))
messages = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    small,
    st.none() | st.builds(Record, small, st.binary(max_size=200), st.text(max_size=10)),
    st.lists(peers, max_size=5).map(tuple),
    st.lists(peers, max_size=5).map(tuple),
    st.integers(0, 2**31 - 1),
)


def raw_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


# ---- varints and Kademlia messages ------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(n):
    data = encode_varint(n)
    assert decode_varint(data + b"tail") == (n, len(data))


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff" * 11, b"\xff" * 9 + b"\x7f"])
def test_bad_varints(data):
    with pytest.raises(DecodeError):
        decode_varint(data)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_message_round_trip(m):
    assert decode_message(encode_message(m)) == m


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    try:
        m = decode_message(data)
    except DecodeError:
        return
    assert isinstance(m, Message)


@settings(max_examples=100, deadline=None)
@given(messages)
def test_our_encoding_parses_with_libp2p_protobuf_and_back(m):
    theirs = kademlia_pb2.Message()
    theirs.ParseFromString(encode_message(m))
    assert theirs.type == m.type and theirs.key == m.key
    assert [(p.id, tuple(p.addrs), p.connection) for p in theirs.closerPeers] == [
        (p.peer_id, p.addrs, p.connection) for p in m.closer_peers
    ]
    assert theirs.HasField("record") == (m.record is not None)
    if m.record is not None:
        assert (theirs.record.key, theirs.record.value, theirs.record.timeReceived) == (
            m.record.key, m.record.value, m.record.time_received)
    assert decode_message(theirs.SerializeToString()) == m


def test_libp2p_fields_we_do_not_use_are_skipped():
    theirs = kademlia_pb2.Message(type=kademlia_pb2.Message.FIND_NODE, key=b"k", senderRecord=b"x" * 50)
    theirs.closerPeers.add(id=b"peer", addrs=[b"a"], signedRecord=b"sig")
    m = decode_message(theirs.SerializeToString())
    assert m.type is MessageType.FIND_NODE and m.closer_peers == (PeerInfo(b"peer", (b"a",)),)


def test_limits():
    with pytest.raises(DecodeError, match="exceeds"):
        decode_message(b"\x00" * (wire.MAX_MESSAGE_SIZE + 1))
    with pytest.raises(DecodeError, match="key"):
        decode_message(encode_message(Message(MessageType.GET_VALUE, key=b"k" * (wire.MAX_KEY_SIZE + 1))))
    many = tuple(PeerInfo(b"p%d" % i) for i in range(wire.MAX_PEERS + 1))
    with pytest.raises(DecodeError, match="peers"):
        decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=many)))
    with pytest.raises(DecodeError, match="addresses"):
        decode_message(encode_message(Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(b"p", (b"a",) * 33),))))
    with pytest.raises(DecodeError, match="unknown message type"):
        decode_message(b"\x08\x09")
    with pytest.raises(DecodeError, match="peer without an id"):
        decode_message(encode_message(Message(MessageType.FIND_NODE)) + b"\x42\x00")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_frame_decoder_any_chunking(payloads, cuts):
    stream = b"".join(frame(p) for p in payloads)
    decoder, out, pos, i = FrameDecoder(1024), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += decoder.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert out == payloads


def test_frame_decoder_refuses_oversized_length_before_buffering():
    with pytest.raises(DecodeError, match="exceeds"):
        FrameDecoder(100).feed(encode_varint(101))


# ---- peer IDs and signed peer records ----------------------------------------------------------


def test_peer_id_matches_libp2p():
    key = Ed25519PrivateKey.generate()
    ours = peer_id_from_public_key(key.public_key())
    theirs = ID.from_pubkey(create_new_key_pair(raw_seed(key)).public_key)
    assert ours == theirs.to_bytes()
    assert peer_id_to_str(ours) == str(theirs) and str(theirs).startswith("12D3KooW")
    assert peer_id_from_str(str(theirs)) == ours
    assert public_key_from_peer_id(ours).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == \
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("text", ["", "not-base58-0OIl", "1" * 200, "QmNotReallyAPeerIdButBase58xxxxxxxxxxx", "3yZe7d"])
def test_bad_peer_ids(text):
    with pytest.raises(RecordError, match="invalid peer ID"):
        peer_id_from_str(text)


def make_record(key: Ed25519PrivateKey, seq: int = 7) -> PeerRecord:
    addrs = (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes(), multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4002/ws").to_bytes())
    return PeerRecord(peer_id_from_public_key(key.public_key()), seq, addrs)


def test_record_round_trip_and_libp2p_accepts_ours():
    key = Ed25519PrivateKey.generate()
    record = make_record(key)
    envelope = seal_peer_record(record, key)
    assert open_peer_record(envelope) == record
    _, theirs = consume_envelope(envelope, "libp2p-peer-record")
    assert theirs.peer_id.to_bytes() == record.peer_id and theirs.seq == record.seq
    assert [a.to_bytes() for a in theirs.addrs] == list(record.addrs)


def test_we_accept_libp2p_envelopes():
    key = Ed25519PrivateKey.generate()
    pair = create_new_key_pair(raw_seed(key))
    addrs = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9")]
    theirs = seal_record(Libp2pPeerRecord(ID.from_pubkey(pair.public_key), addrs, 42), pair.private_key)
    record = open_peer_record(theirs.marshal_envelope())
    assert record.seq == 42 and record.addrs == (addrs[0].to_bytes(),)
    assert record.peer_id == peer_id_from_public_key(key.public_key())


def test_forged_and_misattributed_records_are_refused():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    envelope = bytearray(seal_peer_record(make_record(key), key))
    envelope[-5] ^= 0x40
    with pytest.raises(RecordError, match="signature"):
        open_peer_record(bytes(envelope))
    with pytest.raises(RecordError, match="signed by the key of its peer ID"):
        seal_peer_record(make_record(key), other)
    # an envelope by `other` carrying `key`'s peer ID (built by hand, as an attacker would)
    from overlay.records import _encode_record, _signed_bytes, public_key_bytes
    from overlay.protobuf import field_bytes
    payload = _encode_record(make_record(key))
    forged = (field_bytes(1, public_key_bytes(other.public_key())) + field_bytes(2, b"\x03\x01")
              + field_bytes(3, payload) + field_bytes(5, other.sign(_signed_bytes(payload))))
    with pytest.raises(RecordError, match="another peer's key"):
        open_peer_record(forged)
    wrong_type = (field_bytes(1, public_key_bytes(key.public_key())) + field_bytes(2, b"\x03\x02")
                  + field_bytes(3, payload) + field_bytes(5, key.sign(_signed_bytes(payload))))
    with pytest.raises(RecordError, match="does not carry a peer record"):
        open_peer_record(wrong_type)
    with pytest.raises(RecordError, match="exceeds"):
        open_peer_record(b"\x00" * 9000)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_envelopes_raise_record_error_only(data):
    with pytest.raises(RecordError):
        open_peer_record(data)


def test_validator_checks_key_and_prefers_highest_seq():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    v = PeerRecordValidator()
    pid = peer_id_from_public_key(key.public_key())
    old, new = seal_peer_record(make_record(key, 1), key), seal_peer_record(make_record(key, 9), key)
    v.validate(record_key(pid), new)
    with pytest.raises(RecordError, match="another peer's key"):
        v.validate(record_key(peer_id_from_public_key(other.public_key())), new)
    with pytest.raises(RecordError, match="/peer/"):
        v.validate(b"/other/" + pid, new)
    assert v.select(record_key(pid), [old, b"junk", new]) == 2
    assert v.select(record_key(pid), [new, old]) == 0
