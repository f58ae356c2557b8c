"""Peer IDs and signed peer records (libp2p signed envelopes carrying a routing record).

Wire format (libp2p RFC 0002 signed envelopes, RFC 0003 routing records):

    message PublicKey   { KeyType Type = 1; bytes Data = 2; }        // Ed25519 = 1
    message Envelope    { PublicKey public_key = 1; bytes payload_type = 2;
                          bytes payload = 3; bytes signature = 5; }
    message PeerRecord  { bytes peer_id = 1; uint64 seq = 2;
                          repeated AddressInfo addresses = 3; }     // AddressInfo { bytes multiaddr = 1; }

The signature is Ed25519 over
    uvarint(len(domain)) domain || uvarint(len(payload_type)) payload_type || uvarint(len(payload)) payload
with domain "libp2p-peer-record" and payload_type the two bytes 0x03 0x01 (multicodec
libp2p-peer-record, 0x0301, written big-endian and not as a uvarint). These are the values
go-libp2p and py-libp2p sign and check; the RFC text's "libp2p-routing-state" would not
interoperate with them. A peer ID is the identity multihash (0x00, length) of the protobuf
PublicKey, shown in base58btc ("12D3KooW...").

A node stores its envelope in the DHT under `/peer/<peer-id bytes>`; nodes believe a record only
if it verifies, its signer's peer ID equals the record's and the key's, and among several the
highest seq wins.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence
from dataclasses import dataclass

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from overlay.core.errors import DecodeError, RecordError
from overlay.core.protobuf import encode_varint, expect_bytes, expect_int, field_bytes, field_varint, iter_fields

DOMAIN = b"libp2p-peer-record"
PAYLOAD_TYPE = b"\x03\x01"
KEY_TYPE_ED25519 = 1
MAX_ENVELOPE_SIZE = 8 * 1024
MAX_RECORD_ADDRS = 32
MAX_ADDR_SIZE = 512
KEY_PREFIX = b"/peer/"
_IDENTITY, _SHA256 = 0x00, 0x12
_MAX_INLINE_KEY = 42  # libp2p: keys up to 42 bytes are inlined in the peer ID (identity multihash)


# ---- keys and peer IDs ------------------------------------------------------------------------


def public_key_bytes(pub: Ed25519PublicKey) -> bytes:
    """The libp2p protobuf encoding of an Ed25519 public key (what peer IDs and envelopes carry)."""
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return field_varint(1, KEY_TYPE_ED25519) + field_bytes(2, raw)


def peer_id_from_public_key(pub: Ed25519PublicKey) -> bytes:
    """The binary peer ID: an identity multihash of the protobuf key, as for every Ed25519 peer."""
    encoded = public_key_bytes(pub)
    return bytes([_IDENTITY]) + encode_varint(len(encoded)) + encoded


def public_key_from_protobuf(data: bytes) -> Ed25519PublicKey:
    key_type, raw = None, b""
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            key_type = expect_int(number, wire_type, value)
        elif number == 2:
            raw = expect_bytes(number, wire_type, value)
    if key_type != KEY_TYPE_ED25519 or len(raw) != 32:
        raise RecordError("only Ed25519 public keys are accepted")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise RecordError("invalid Ed25519 public key") from None


def public_key_from_peer_id(peer_id: bytes) -> Ed25519PublicKey:
    """The key an identity peer ID embeds; RecordError for hashed IDs and non-Ed25519 keys."""
    if len(peer_id) < 2 or peer_id[0] != _IDENTITY or peer_id[1] != len(peer_id) - 2:
        raise RecordError("peer ID does not embed its public key (not an identity multihash)")
    try:
        key = public_key_from_protobuf(peer_id[2:])
    except DecodeError as e:
        raise RecordError(f"peer ID holds a malformed public key: {e}") from None
    if peer_id_from_public_key(key) != peer_id:
        raise RecordError("peer ID holds a non-canonical public key encoding")
    return key


def peer_id_to_str(peer_id: bytes) -> str:
    return base58.b58encode(peer_id).decode()


def peer_id_from_str(text: str) -> bytes:
    """Parse a base58btc peer ID (identity or sha2-256 multihash); RecordError with the reason."""
    if not text or len(text) > 128:
        raise RecordError(f"invalid peer ID {text[:64]!r}: wrong length")
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise RecordError(f"invalid peer ID {text[:64]!r}: not base58") from None
    identity = len(raw) >= 2 and raw[0] == _IDENTITY and raw[1] == len(raw) - 2 and raw[1] <= _MAX_INLINE_KEY
    sha256 = len(raw) == 34 and raw[0] == _SHA256 and raw[1] == 32
    if not (identity or sha256):
        raise RecordError(f"invalid peer ID {text[:64]!r}: not an identity or sha2-256 multihash")
    return raw


# ---- peer records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRecord:
    peer_id: bytes
    seq: int
    addrs: tuple[bytes, ...]  # binary multiaddrs


def _encode_record(record: PeerRecord) -> bytes:
    parts = [field_bytes(1, record.peer_id), field_varint(2, record.seq) if record.seq else b""]
    parts += [field_bytes(3, field_bytes(1, addr)) for addr in record.addrs]
    return b"".join(parts)


def _decode_record(data: bytes) -> PeerRecord:
    peer_id, seq, addrs = b"", 0, []
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            peer_id = expect_bytes(number, wire_type, value)
        elif number == 2:
            seq = expect_int(number, wire_type, value)
        elif number == 3:
            addr = b""
            for inner, inner_type, inner_value in iter_fields(expect_bytes(number, wire_type, value)):
                if inner == 1:
                    addr = expect_bytes(inner, inner_type, inner_value)
            if len(addr) > MAX_ADDR_SIZE:
                raise RecordError(f"address of {len(addr)} bytes exceeds {MAX_ADDR_SIZE}")
            addrs.append(addr)
            if len(addrs) > MAX_RECORD_ADDRS:
                raise RecordError(f"more than {MAX_RECORD_ADDRS} addresses")
    return PeerRecord(peer_id, seq, tuple(addrs))


def _signed_bytes(payload: bytes) -> bytes:
    return b"".join(encode_varint(len(part)) + part for part in (DOMAIN, PAYLOAD_TYPE, payload))


def seal_peer_record(record: PeerRecord, key: Ed25519PrivateKey) -> bytes:
    """Sign `record` into an envelope, refusing what `open_peer_record` would reject.

    A record can only be sealed by its own peer's key, and must stay within the limits, so a
    node never publishes a record that other nodes would drop.
    """
    if peer_id_from_public_key(key.public_key()) != record.peer_id:
        raise RecordError("a peer record must be signed by the key of its peer ID")
    if not 0 <= record.seq < 1 << 64:
        raise RecordError(f"seq {record.seq} is not a uint64")
    if len(record.addrs) > MAX_RECORD_ADDRS:
        raise RecordError(f"{len(record.addrs)} addresses exceed the limit of {MAX_RECORD_ADDRS}")
    if any(len(addr) > MAX_ADDR_SIZE for addr in record.addrs):
        raise RecordError(f"an address exceeds {MAX_ADDR_SIZE} bytes")
    payload = _encode_record(record)
    envelope = b"".join((
        field_bytes(1, public_key_bytes(key.public_key())),
        field_bytes(2, PAYLOAD_TYPE),
        field_bytes(3, payload),
        field_bytes(5, key.sign(_signed_bytes(payload))),
    ))
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise RecordError(f"envelope of {len(envelope)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return envelope


@functools.lru_cache(maxsize=4096)
def open_peer_record(data: bytes) -> PeerRecord:
    """Verify an envelope and return its record; RecordError with the reason otherwise.

    The same envelope reaches a node many times (every lookup answer carries it, every
    republish stores it), so the records of valid envelopes are kept in a bounded cache: one
    signature check each. Invalid ones raise and are not kept."""
    if len(data) > MAX_ENVELOPE_SIZE:
        raise RecordError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    try:
        fields: dict[int, bytes] = {}
        for number, wire_type, value in iter_fields(data):
            if number in (1, 2, 3, 5):
                fields[number] = expect_bytes(number, wire_type, value)
        if set(fields) != {1, 2, 3, 5}:
            raise RecordError("envelope lacks a public key, payload type, payload or signature")
        if fields[2] != PAYLOAD_TYPE:
            raise RecordError("envelope does not carry a peer record (wrong payload type)")
        public_key = public_key_from_protobuf(fields[1])
        try:
            public_key.verify(fields[5], _signed_bytes(fields[3]))
        except InvalidSignature:
            raise RecordError("envelope signature does not verify") from None
        record = _decode_record(fields[3])
    except DecodeError as e:
        raise RecordError(f"malformed envelope: {e}") from None
    if record.peer_id != peer_id_from_public_key(public_key):
        raise RecordError("peer record is signed by another peer's key")
    return record


def record_key(peer_id: bytes) -> bytes:
    """The DHT key under which a peer's record is stored."""
    return KEY_PREFIX + peer_id


def peer_id_from_record_key(key: bytes) -> bytes:
    if not key.startswith(KEY_PREFIX) or len(key) == len(KEY_PREFIX):
        raise RecordError("not a /peer/ key")
    return key[len(KEY_PREFIX) :]


def validate_peer_record(key: bytes, value: bytes) -> PeerRecord:
    """The record in `value` if it verifies and belongs under `key`; RecordError otherwise."""
    record = open_peer_record(value)
    if record.peer_id != peer_id_from_record_key(key):
        raise RecordError("peer record stored under another peer's key")
    return record


def select_peer_record(values: Sequence[bytes], key: bytes | None = None) -> int:
    """Index of the valid record with the highest seq (the first on ties); invalid ones, and with
    `key` those of other peers, are skipped. RecordError when none is valid."""
    best, best_seq = -1, -1
    for i, value in enumerate(values):
        try:
            record = open_peer_record(value) if key is None else validate_peer_record(key, value)
        except RecordError:
            continue
        if record.seq > best_seq:
            best, best_seq = i, record.seq
    if best < 0:
        raise RecordError("no valid peer record among the values")
    return best


class PeerRecordValidator:
    """DHT validator for the `/peer/` namespace: signed by the key's peer, highest seq wins."""

    def validate(self, key: bytes, value: bytes) -> None:
        validate_peer_record(key, value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        return select_peer_record(values, key)
