"""libp2p Kademlia messages: encoding, decoding with limits, and stream framing.

Wire format (libp2p kad-dht spec, proto3), each message preceded on the stream by its length
as an unsigned varint:

    message Record  { bytes key = 1; bytes value = 2; string timeReceived = 5; }
    message Message {
      enum MessageType { PUT_VALUE = 0; GET_VALUE = 1; ADD_PROVIDER = 2;
                         GET_PROVIDERS = 3; FIND_NODE = 4; PING = 5; }
      enum ConnectionType { NOT_CONNECTED = 0; CONNECTED = 1; CAN_CONNECT = 2; CANNOT_CONNECT = 3; }
      message Peer { bytes id = 1; repeated bytes addrs = 2; ConnectionType connection = 3; }
      MessageType type = 1; int32 clusterLevelRaw = 10; bytes key = 2; Record record = 3;
      repeated Peer closerPeers = 8; repeated Peer providerPeers = 9;
    }

Fields we do not use (a record's author/signature, a peer's signedRecord, senderRecord) are
skipped when decoding; peer records travel signed in Record.value instead. A Peer must carry
an id, and a message type outside the enum is refused, since neither can be acted upon.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from overlay.core.errors import DecodeError
from overlay.core.peer import PeerInfo
from overlay.core.protobuf import (
    as_int32,
    expect_bytes,
    expect_int,
    field_bytes,
    field_varint,
    iter_fields,
)

MAX_MESSAGE_SIZE = 64 * 1024
MAX_KEY_SIZE = 1024
MAX_VALUE_SIZE = 16 * 1024
MAX_PEERS = 64
MAX_ADDRS_PER_PEER = 32
MAX_ADDR_SIZE = 512
MAX_PEER_ID_SIZE = 128


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(frozen=True)
class Message:
    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[PeerInfo, ...] = ()
    provider_peers: tuple[PeerInfo, ...] = ()
    cluster_level: int = 0


# ---- encoding ---------------------------------------------------------------------------------


def _int32_field(number: int, value: int) -> bytes:
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"field {number}: {value} does not fit in int32")
    return field_varint(number, value) if value else b""


@functools.lru_cache(maxsize=8192)
def _peer_field(number: int, peer: PeerInfo) -> bytes:
    """Cached: the same peers fill answer after answer."""
    return field_bytes(number, _encode_peer(peer))


def _encode_peer(peer: PeerInfo) -> bytes:
    parts = [field_bytes(1, peer.peer_id)]
    parts += [field_bytes(2, addr) for addr in peer.addrs]
    parts.append(_int32_field(3, peer.connection))
    return b"".join(parts)


def _encode_record(record: Record) -> bytes:
    parts = []
    if record.key:
        parts.append(field_bytes(1, record.key))
    if record.value:
        parts.append(field_bytes(2, record.value))
    if record.time_received:
        parts.append(field_bytes(5, record.time_received.encode()))
    return b"".join(parts)


def encode_message(m: Message) -> bytes:
    """Proto3 encoding (default values omitted), in field order as protobuf libraries emit it."""
    parts = [_int32_field(1, int(m.type))]
    if m.key:
        parts.append(field_bytes(2, m.key))
    if m.record is not None:
        parts.append(field_bytes(3, _encode_record(m.record)))
    parts += [_peer_field(8, peer) for peer in m.closer_peers]
    parts += [_peer_field(9, peer) for peer in m.provider_peers]
    parts.append(_int32_field(10, m.cluster_level))
    return b"".join(parts)


# ---- decoding ---------------------------------------------------------------------------------


def _limit(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise DecodeError(f"{what} of {size} bytes exceeds the limit of {limit}")


def _decode_peer(data: bytes) -> PeerInfo:
    peer_id, addrs, connection = b"", [], 0
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            peer_id = expect_bytes(number, wire_type, value)
            _limit("peer id", len(peer_id), MAX_PEER_ID_SIZE)
        elif number == 2:
            addr = expect_bytes(number, wire_type, value)
            _limit("address", len(addr), MAX_ADDR_SIZE)
            addrs.append(addr)
            if len(addrs) > MAX_ADDRS_PER_PEER:
                raise DecodeError(f"more than {MAX_ADDRS_PER_PEER} addresses for one peer")
        elif number == 3:
            connection = as_int32(expect_int(number, wire_type, value))
    if not peer_id:
        raise DecodeError("peer without an id")
    return PeerInfo(peer_id, tuple(addrs), connection)


def _decode_record(data: bytes) -> Record:
    key, value, time_received = b"", b"", ""
    for number, wire_type, field in iter_fields(data):
        if number == 1:
            key = expect_bytes(number, wire_type, field)
            _limit("record key", len(key), MAX_KEY_SIZE)
        elif number == 2:
            value = expect_bytes(number, wire_type, field)
            _limit("record value", len(value), MAX_VALUE_SIZE)
        elif number == 5:
            try:
                time_received = expect_bytes(number, wire_type, field).decode()
            except UnicodeDecodeError:
                raise DecodeError("record timeReceived is not UTF-8") from None
    return Record(key, value, time_received)


def decode_message(data: bytes) -> Message:
    """Decode one message; DecodeError for anything malformed or over the limits."""
    _limit("message", len(data), MAX_MESSAGE_SIZE)
    type_value, key, record, cluster_level = 0, b"", None, 0
    closer: list[PeerInfo] = []
    providers: list[PeerInfo] = []
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            type_value = as_int32(expect_int(number, wire_type, value))
        elif number == 2:
            key = expect_bytes(number, wire_type, value)
            _limit("key", len(key), MAX_KEY_SIZE)
        elif number == 3:
            record = _decode_record(expect_bytes(number, wire_type, value))
        elif number in (8, 9):
            peers = closer if number == 8 else providers
            peers.append(_decode_peer(expect_bytes(number, wire_type, value)))
            if len(peers) > MAX_PEERS:
                raise DecodeError(f"more than {MAX_PEERS} peers in one list")
        elif number == 10:
            cluster_level = as_int32(expect_int(number, wire_type, value))
    try:
        message_type = MessageType(type_value)
    except ValueError:
        raise DecodeError(f"unknown message type {type_value}") from None
    return Message(message_type, key, record, tuple(closer), tuple(providers), cluster_level)
