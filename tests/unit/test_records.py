"""Peer IDs and signed peer records: round trips, every refusal with its reason, arbitrary input.
Interop with py-libp2p's peer IDs and envelope code is in tests/interop/test_records.py."""

from __future__ import annotations

import multiaddr
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overlay.core import records
from overlay.core.errors import RecordError
from overlay.core.protobuf import encode_varint, field_bytes, field_varint
from overlay.core.records import (
    PeerRecord,
    PeerRecordValidator,
    open_peer_record,
    peer_id_from_public_key,
    peer_id_from_record_key,
    peer_id_from_str,
    peer_id_to_str,
    public_key_bytes,
    public_key_from_peer_id,
    record_key,
    seal_peer_record,
    select_peer_record,
    validate_peer_record,
)

ADDRS = (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes(), multiaddr.Multiaddr("/ip6/::1/tcp/4002/ws").to_bytes())


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pid(key: Ed25519PrivateKey) -> bytes:
    return peer_id_from_public_key(key.public_key())


def make_record(key: Ed25519PrivateKey, seq: int = 7, addrs: tuple[bytes, ...] = ADDRS) -> PeerRecord:
    return PeerRecord(pid(key), seq, addrs)


def payload(peer_id: bytes, seq: int, addrs: list[bytes]) -> bytes:
    """A PeerRecord payload built field by field from libp2p's schema (peer_id = 1, seq = 2, each
    address a message in field 3 with its bytes in field 1; proto3 leaves out empty values), not
    with our encoder. tests/interop/test_records.py checks it gives py-libp2p's bytes."""
    def present(field: bytes, value: bytes | int) -> bytes:
        return field if value else b""

    return (present(field_bytes(1, peer_id), peer_id) + present(field_varint(2, seq), seq)
            + b"".join(field_bytes(3, present(field_bytes(1, addr), addr)) for addr in addrs))


def hand_sealed(signer: Ed25519PrivateKey, body: bytes, payload_type: bytes = b"\x03\x01",
                domain: bytes = b"libp2p-peer-record") -> bytes:
    """An envelope assembled field by field, as an attacker or another implementation would."""
    signed = b"".join(encode_varint(len(p)) + p for p in (domain, payload_type, body))
    return (field_bytes(1, public_key_bytes(signer.public_key())) + field_bytes(2, payload_type)
            + field_bytes(3, body) + field_bytes(5, signer.sign(signed)))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def other() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


# ---- peer IDs ---------------------------------------------------------------------------------


def test_public_key_comes_back_out_of_the_peer_id(key):
    assert public_key_from_peer_id(pid(key)).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw_public(key)


def test_hashed_peer_ids_parse_but_embed_no_key():
    rsa_style = b"\x12\x20" + bytes(range(32))
    text = peer_id_to_str(rsa_style)
    assert text.startswith("Qm") and peer_id_from_str(text) == rsa_style
    with pytest.raises(RecordError, match="does not embed its public key"):
        public_key_from_peer_id(rsa_style)


@pytest.mark.parametrize(
    ("peer_id", "reason"),
    [
        (b"", "does not embed"),
        (b"\x00\x05abc", "does not embed"),
        (b"\x00\x04" + field_varint(1, 2) + field_bytes(2, b""), "only Ed25519"),
        (b"\x00\x26" + field_varint(1, 1) + field_bytes(2, bytes(32)) + field_varint(9, 0), "non-canonical"),
        (b"\x00\x03\x0a\x05a", "malformed public key"),
    ],
)
def test_public_key_from_peer_id_refuses_with_the_reason(peer_id, reason):
    with pytest.raises(RecordError, match=reason):
        public_key_from_peer_id(peer_id)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "wrong length"),
        ("1" * 200, "wrong length"),
        ("not-base58-0OIl", "not base58"),
        ("12D3KooWé", "not base58"),
        ("QmYwAPJzv5CZsnA625s3Xf2nemtYg", "not an identity or sha2-256 multihash"),
        ("3yZe7d", "not an identity or sha2-256 multihash"),
        (peer_id_to_str(b"\x12\x20" + bytes(31)), "not an identity or sha2-256 multihash"),
        (peer_id_to_str(b"\x00\x2b" + bytes(43)), "not an identity or sha2-256 multihash"),
    ],
)
def test_bad_peer_id_strings_are_refused_with_the_reason(text, reason):
    with pytest.raises(RecordError, match=f"invalid peer ID .*{reason}"):
        peer_id_from_str(text)


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_arbitrary_text_parses_as_a_peer_id_or_raises_record_error(text):
    try:
        raw = peer_id_from_str(text)
    except RecordError:
        return
    assert raw[0] in (0x00, 0x12) and peer_id_to_str(raw) == text


# ---- sealing and opening ----------------------------------------------------------------------


def test_round_trip(key):
    record = make_record(key)
    assert open_peer_record(seal_peer_record(record, key)) == record
    empty = make_record(key, seq=0, addrs=())
    assert open_peer_record(seal_peer_record(empty, key)) == empty


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**64 - 1), st.lists(st.binary(max_size=records.MAX_ADDR_SIZE), max_size=5).map(tuple))
def test_round_trip_any_seq_and_addresses(seq, addrs):
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    record = PeerRecord(pid(key), seq, addrs)
    assert open_peer_record(seal_peer_record(record, key)) == record


# ---- refusals ---------------------------------------------------------------------------------


def test_forged_signature_is_refused(key):
    envelope = seal_peer_record(make_record(key), key)
    for i in (1, 30, 63):  # bytes inside the trailing 64-byte signature
        forged = bytearray(envelope)
        forged[-i] ^= 0x01
        with pytest.raises(RecordError, match="signature does not verify"):
            open_peer_record(bytes(forged))


def test_tampered_payload_is_refused(key):
    envelope = seal_peer_record(make_record(key, seq=5), key)
    at = envelope.index(field_varint(2, 5))  # the seq inside the payload
    tampered = envelope[:at] + field_varint(2, 6) + envelope[at + 2 :]
    with pytest.raises(RecordError, match="signature does not verify"):
        open_peer_record(tampered)


def test_record_signed_by_another_key_is_refused(key, other):
    forged = hand_sealed(other, payload(pid(key), 9, list(ADDRS)))
    with pytest.raises(RecordError, match="signed by another peer's key"):
        open_peer_record(forged)
    with pytest.raises(RecordError, match="signed by the key of its peer ID"):
        seal_peer_record(make_record(key), other)


@pytest.mark.parametrize("payload_type", [b"\x03\x02", b"\x81\x06", b"/libp2p/routing-state-record"])
def test_wrong_payload_type_is_refused(key, payload_type):
    envelope = hand_sealed(key, payload(pid(key), 1, []), payload_type=payload_type)
    with pytest.raises(RecordError, match="wrong payload type"):
        open_peer_record(envelope)


def test_signature_in_another_domain_is_refused(key):
    envelope = hand_sealed(key, payload(pid(key), 1, []), domain=b"libp2p-routing-state")
    with pytest.raises(RecordError, match="signature does not verify"):
        open_peer_record(envelope)


def test_every_truncation_is_refused(key):
    envelope = seal_peer_record(make_record(key), key)
    for end in range(len(envelope)):
        with pytest.raises(RecordError):
            open_peer_record(envelope[:end])


def test_missing_fields_and_bad_keys_are_refused(key):
    body = payload(pid(key), 1, [])
    public, kind = field_bytes(1, public_key_bytes(key.public_key())), field_bytes(2, b"\x03\x01")
    with pytest.raises(RecordError, match="lacks"):
        open_peer_record(public + kind + field_bytes(3, body))
    with pytest.raises(RecordError, match="lacks"):
        open_peer_record(b"")
    envelope = hand_sealed(key, body)
    with pytest.raises(RecordError, match="signature does not verify"):
        open_peer_record(envelope + field_bytes(5, b""))  # a later field wins, as in protobuf
    with pytest.raises(RecordError, match="only Ed25519"):
        open_peer_record(field_bytes(1, field_varint(1, 1) + field_bytes(2, bytes(31))) + envelope[envelope.index(kind):])
    with pytest.raises(RecordError, match="malformed envelope: field 1: expected length-delimited"):
        open_peer_record(field_varint(1, 1) + envelope)


def test_oversize_envelope_and_address_limits(key):
    with pytest.raises(RecordError, match="exceeds 8192"):
        open_peer_record(b"\x00" * (records.MAX_ENVELOPE_SIZE + 1))
    body = payload(pid(key), 1, [b"a"] * (records.MAX_RECORD_ADDRS + 1))
    with pytest.raises(RecordError, match="more than 32 addresses"):
        open_peer_record(hand_sealed(key, body))
    body = payload(pid(key), 1, [b"a" * (records.MAX_ADDR_SIZE + 1)])
    with pytest.raises(RecordError, match="address of 513 bytes"):
        open_peer_record(hand_sealed(key, body))
    for addrs in ((b"a" * 200,) * records.MAX_RECORD_ADDRS, (b"a" * records.MAX_ADDR_SIZE,)):
        at_limits = make_record(key, addrs=addrs)
        assert open_peer_record(seal_peer_record(at_limits, key)) == at_limits


def test_seal_refuses_what_others_would_drop(key):
    with pytest.raises(RecordError, match="33 addresses exceed"):
        seal_peer_record(make_record(key, addrs=(b"a",) * 33), key)
    with pytest.raises(RecordError, match="exceeds 512 bytes"):
        seal_peer_record(make_record(key, addrs=(b"a" * 513,)), key)
    with pytest.raises(RecordError, match="envelope of .* exceeds 8192"):
        seal_peer_record(make_record(key, addrs=(b"a" * 512,) * 32), key)
    with pytest.raises(RecordError, match="not a uint64"):
        seal_peer_record(make_record(key, seq=-1), key)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_record_error_only(data):
    with pytest.raises(RecordError):
        open_peer_record(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_envelopes_raise_record_error_only(data):
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    envelope = seal_peer_record(make_record(key), key)
    mutated = bytearray(envelope)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    assume(bytes(mutated) != envelope)
    with pytest.raises(RecordError):
        open_peer_record(bytes(mutated))


# ---- DHT keys, validation and selection --------------------------------------------------------


def test_record_keys(key):
    assert record_key(pid(key)) == b"/peer/" + pid(key)
    assert peer_id_from_record_key(record_key(pid(key))) == pid(key)
    for bad in (b"/peer/", b"/pk/" + pid(key), pid(key)):
        with pytest.raises(RecordError, match="not a /peer/ key"):
            peer_id_from_record_key(bad)


def test_validate_checks_the_key(key, other):
    envelope = seal_peer_record(make_record(key), key)
    assert validate_peer_record(record_key(pid(key)), envelope) == make_record(key)
    with pytest.raises(RecordError, match="stored under another peer's key"):
        validate_peer_record(record_key(pid(other)), envelope)
    with pytest.raises(RecordError, match="not a /peer/ key"):
        validate_peer_record(b"/other/" + pid(key), envelope)
    with pytest.raises(RecordError, match="signature"):
        validate_peer_record(record_key(pid(key)), envelope[:-1] + bytes([envelope[-1] ^ 1]))


def test_select_prefers_the_highest_valid_seq(key, other):
    old, new = seal_peer_record(make_record(key, 1), key), seal_peer_record(make_record(key, 9), key)
    forged_newer = hand_sealed(other, payload(pid(key), 99, []))
    assert select_peer_record([old, b"junk", new, forged_newer]) == 2
    assert select_peer_record([new, old]) == 0
    same = seal_peer_record(make_record(key, 9, ADDRS[:1]), key)
    assert select_peer_record([old, new, same]) == 1  # ties: the first


def test_select_with_a_key_skips_other_peers_records(key, other):
    mine, theirs = seal_peer_record(make_record(key, 1), key), seal_peer_record(make_record(other, 50), other)
    assert select_peer_record([mine, theirs]) == 1
    assert select_peer_record([mine, theirs], record_key(pid(key))) == 0
    with pytest.raises(RecordError, match="no valid peer record"):
        select_peer_record([theirs, b""], record_key(pid(key)))
    with pytest.raises(RecordError, match="no valid peer record"):
        select_peer_record([])


def test_validator_for_the_dht_store(key, other):
    v, k = PeerRecordValidator(), record_key(pid(key))
    old, new = seal_peer_record(make_record(key, 1), key), seal_peer_record(make_record(key, 2), key)
    assert v.validate(k, new) is None
    with pytest.raises(RecordError, match="another peer's key"):
        v.validate(record_key(pid(other)), new)
    assert v.select(k, [old, new]) == 1 and v.select(k, [new, old]) == 0
