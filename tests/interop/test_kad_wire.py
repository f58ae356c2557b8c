"""Kademlia messages against py-libp2p's generated protobuf classes (an independent implementation
of the same schema): each reads the other's bytes with the same values, and we write the same bytes."""

from __future__ import annotations

from hypothesis import given, settings
from libp2p.kad_dht.pb import kademlia_pb2

from overlay.core.protobuf import field_bytes, field_varint
from overlay.kademlia.wire import (
    Message,
    MessageType,
    PeerInfo,
    Record,
    decode_message,
    encode_message,
)
from tests.unit.test_kad_wire import messages


def to_pb(m: Message) -> kademlia_pb2.Message:
    pb = kademlia_pb2.Message(type=int(m.type), key=m.key, clusterLevelRaw=m.cluster_level)
    if m.record is not None:
        pb.record.CopyFrom(kademlia_pb2.Record(key=m.record.key, value=m.record.value, timeReceived=m.record.time_received))
    for ours, theirs in ((m.closer_peers, pb.closerPeers), (m.provider_peers, pb.providerPeers)):
        for p in ours:
            theirs.add(id=p.peer_id, addrs=list(p.addrs), connection=p.connection)
    return pb


def from_pb(pb: kademlia_pb2.Message) -> Message:
    def peer_list(ps):
        return tuple(PeerInfo(p.id, tuple(p.addrs), p.connection) for p in ps)

    record = None
    if pb.HasField("record"):
        record = Record(pb.record.key, pb.record.value, pb.record.timeReceived)
    return Message(MessageType(pb.type), pb.key, record, peer_list(pb.closerPeers), peer_list(pb.providerPeers),
                   pb.clusterLevelRaw)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_libp2p_protobuf_reads_ours_with_the_same_values(m):
    theirs = kademlia_pb2.Message()
    theirs.ParseFromString(encode_message(m))
    assert from_pb(theirs) == m
    assert theirs.HasField("record") == (m.record is not None)


@settings(max_examples=150, deadline=None)
@given(messages)
def test_we_read_libp2p_protobuf_bytes(m):
    data = to_pb(m).SerializeToString()
    assert decode_message(data) == m
    assert encode_message(m) == data  # same canonical encoding, byte for byte


def test_fields_we_do_not_use_are_skipped():
    theirs = kademlia_pb2.Message(type=kademlia_pb2.Message.GET_VALUE, key=b"k", senderRecord=b"x" * 50)
    theirs.record.CopyFrom(kademlia_pb2.Record(key=b"k", value=b"v", author=b"a", signature=b"s"))
    theirs.closerPeers.add(id=b"peer", addrs=[b"a"], signedRecord=b"sig")
    unknown = field_varint(20, 7) + b"\xa9\x01" + bytes(8) + b"\xb5\x01" + bytes(4) + field_bytes(99, b"zz")
    m = decode_message(theirs.SerializeToString() + unknown)
    assert m == Message(MessageType.GET_VALUE, b"k", Record(b"k", b"v"), (PeerInfo(b"peer", (b"a",)),))


def test_negative_cluster_level_and_other_connection_values_survive():
    m = Message(MessageType.FIND_NODE, cluster_level=-3, closer_peers=(PeerInfo(b"p", (), 3),))
    data = encode_message(m)
    assert kademlia_pb2.Message.FromString(data).clusterLevelRaw == -3
    assert decode_message(data) == m
