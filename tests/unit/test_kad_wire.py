"""Kademlia messages: round trips, limits, arbitrary input. Interop with py-libp2p's generated
protobuf classes is in tests/interop/test_kad_wire.py."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overlay.core.errors import DecodeError
from overlay.kademlia import wire
from overlay.core.framing import FrameDecoder, frame
from overlay.kademlia.wire import (
    Message,
    MessageType,
    PeerInfo,
    Record,
    decode_message,
    encode_message,
)
from overlay.core.protobuf import encode_varint, field_bytes, field_varint

addrs = st.lists(st.binary(max_size=60), max_size=4).map(tuple)
peers = st.builds(PeerInfo, st.binary(min_size=1, max_size=wire.MAX_PEER_ID_SIZE), addrs, st.integers(0, 3))
peer_lists = st.lists(peers, max_size=6).map(tuple)
records = st.builds(Record, st.binary(max_size=80), st.binary(max_size=400), st.text(max_size=30))
messages = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=80),
    st.none() | records,
    peer_lists,
    peer_lists,
    st.integers(-(2**31), 2**31 - 1),
)


def decodes_or_refuses(data: bytes) -> None:
    try:
        m = decode_message(data)
    except DecodeError:
        return
    assert isinstance(m, Message) and isinstance(m.type, MessageType)
    assert len(m.closer_peers) <= wire.MAX_PEERS and len(m.provider_peers) <= wire.MAX_PEERS
    assert len(m.key) <= wire.MAX_KEY_SIZE


# ---- round trips ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(messages)
def test_round_trip(m):
    assert decode_message(encode_message(m)) == m


def test_default_values_are_omitted_as_in_proto3():
    assert encode_message(Message(MessageType.PUT_VALUE)) == b""
    assert decode_message(b"") == Message(MessageType.PUT_VALUE)
    assert encode_message(Message(MessageType.PING)) == b"\x08\x05"


def test_out_of_range_int32_is_refused_when_encoding():
    with pytest.raises(ValueError, match="int32"):
        encode_message(Message(MessageType.PING, cluster_level=2**31))


# ---- malformed input and limits ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (field_varint(1, 6), "unknown message type 6"),
        (encode_varint(1 << 3) + encode_varint(-1), "unknown message type -1"),
        (field_bytes(1, b"\x04"), "field 1: expected varint"),
        (field_varint(2, 1), "field 2: expected length-delimited"),
        (field_bytes(8, b""), "peer without an id"),
        (field_bytes(8, field_varint(1, 1)), "expected length-delimited"),
        (field_bytes(3, field_bytes(5, b"\xff")), "not UTF-8"),
        (field_bytes(3, b"\x0a\x05ab"), "runs past the end"),
        (b"\x08", "truncated varint"),
        (b"\x0b", "groups"),
    ],
)
def test_malformed_messages_are_refused_with_the_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_message(data)


def test_every_truncation_of_a_message_is_refused_or_decodes():
    m = Message(MessageType.PUT_VALUE, b"key", Record(b"key", b"value" * 10, "now"),
                (PeerInfo(b"peer-a", (b"addr1", b"addr2"), 1),), (PeerInfo(b"peer-b"),), 2)
    data = encode_message(m)
    refused = 0
    for end in range(len(data)):
        try:
            decode_message(data[:end])
        except DecodeError:
            refused += 1
    assert refused > len(data) // 2  # cuts inside a field fail; cuts between fields decode a prefix


def test_limits_are_exact():
    at = {
        "key": Message(MessageType.GET_VALUE, key=b"k" * wire.MAX_KEY_SIZE),
        "value": Message(MessageType.PUT_VALUE, record=Record(b"k", b"v" * wire.MAX_VALUE_SIZE)),
        "peers": Message(MessageType.FIND_NODE, closer_peers=tuple(PeerInfo(b"%d" % i) for i in range(wire.MAX_PEERS))),
        "addrs": Message(MessageType.FIND_NODE, provider_peers=(PeerInfo(b"p", (b"a",) * wire.MAX_ADDRS_PER_PEER),)),
        "addr": Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(b"p", (b"a" * wire.MAX_ADDR_SIZE,)),)),
        "id": Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(b"p" * wire.MAX_PEER_ID_SIZE),)),
    }
    over = {
        "key": Message(MessageType.GET_VALUE, key=b"k" * (wire.MAX_KEY_SIZE + 1)),
        "value": Message(MessageType.PUT_VALUE, record=Record(b"k", b"v" * (wire.MAX_VALUE_SIZE + 1))),
        "peers": Message(MessageType.FIND_NODE, closer_peers=tuple(PeerInfo(b"%d" % i) for i in range(wire.MAX_PEERS + 1))),
        "addrs": Message(MessageType.FIND_NODE, provider_peers=(PeerInfo(b"p", (b"a",) * (wire.MAX_ADDRS_PER_PEER + 1)),)),
        "addr": Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(b"p", (b"a" * (wire.MAX_ADDR_SIZE + 1),)),)),
        "id": Message(MessageType.FIND_NODE, closer_peers=(PeerInfo(b"p" * (wire.MAX_PEER_ID_SIZE + 1)),)),
    }
    reasons = {"key": "key of", "value": "record value", "peers": "more than 64 peers",
               "addrs": "more than 32 addresses", "addr": "address of 513", "id": "peer id of"}
    for name, m in at.items():
        assert decode_message(encode_message(m)) == m, name
    for name, m in over.items():
        with pytest.raises(DecodeError, match=reasons[name]):
            decode_message(encode_message(m))


def test_record_key_limit_and_message_size_limit():
    with pytest.raises(DecodeError, match="record key"):
        decode_message(encode_message(Message(MessageType.PUT_VALUE, record=Record(b"k" * (wire.MAX_KEY_SIZE + 1), b""))))
    with pytest.raises(DecodeError, match="message of 65537 bytes exceeds"):
        decode_message(b"\x00" * (wire.MAX_MESSAGE_SIZE + 1))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    decodes_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_mutated_messages_decode_or_raise_decode_error(m, data):
    raw = bytearray(encode_message(m))
    assume(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decodes_or_refuses(bytes(raw))


def test_a_framed_message_decodes():
    decoder = FrameDecoder(wire.MAX_MESSAGE_SIZE)
    payload = encode_message(Message(MessageType.FIND_NODE, key=b"k"))
    assert [decode_message(f) for f in decoder.feed(frame(payload))] == [Message(MessageType.FIND_NODE, b"k")]
