"""Peer IDs and signed peer records against py-libp2p's peer IDs and envelope code (an independent
implementation): the same IDs, envelopes each side opens, the same bytes from the same key."""

from __future__ import annotations

import multiaddr
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto import secp256k1
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.envelope import consume_envelope, seal_record
from libp2p.peer.id import ID
from libp2p.peer.pb import peer_record_pb2
from libp2p.peer.peer_record import PEER_RECORD_ENVELOPE_DOMAIN, PEER_RECORD_ENVELOPE_PAYLOAD_TYPE
from libp2p.peer.peer_record import PeerRecord as Libp2pPeerRecord

from overlay.core import records
from overlay.core.errors import RecordError
from overlay.core.records import (
    PeerRecord,
    open_peer_record,
    peer_id_from_str,
    peer_id_to_str,
    public_key_bytes,
    seal_peer_record,
)
from tests.unit.test_records import ADDRS, hand_sealed, make_record, pid, raw_public
from tests.unit.test_records import payload as field_by_field_payload


def raw_seed(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def payload(peer_id: bytes, seq: int, addrs: list[bytes]) -> bytes:
    """A PeerRecord payload built with py-libp2p's protobuf classes, not with our encoder."""
    msg = peer_record_pb2.PeerRecord(peer_id=peer_id, seq=seq)
    for addr in addrs:
        msg.addresses.add(multiaddr=addr)
    return msg.SerializeToString()


# ---- peer IDs ---------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_peer_id_bytes_and_string_equal_libp2p(seed):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    theirs = ID.from_pubkey(create_new_key_pair(seed).public_key)
    ours = pid(key)
    assert ours == theirs.to_bytes()
    assert peer_id_to_str(ours) == str(theirs) and str(theirs).startswith("12D3KooW")
    assert peer_id_from_str(str(theirs)) == ours
    assert ours[:2] == b"\x00\x24" and ours[2:] == public_key_bytes(key.public_key())


# ---- sealing and opening ----------------------------------------------------------------------


def test_we_use_the_domain_and_payload_type_libp2p_implementations_sign_with():
    assert records.DOMAIN.decode() == PEER_RECORD_ENVELOPE_DOMAIN == "libp2p-peer-record"
    assert records.PAYLOAD_TYPE == PEER_RECORD_ENVELOPE_PAYLOAD_TYPE == b"\x03\x01"


def test_libp2p_accepts_our_envelope(key):
    record = make_record(key)
    envelope, theirs = consume_envelope(seal_peer_record(record, key), PEER_RECORD_ENVELOPE_DOMAIN)
    assert theirs.peer_id.to_bytes() == record.peer_id and theirs.seq == record.seq
    assert [a.to_bytes() for a in theirs.addrs] == list(record.addrs)
    assert envelope.public_key.to_bytes() == raw_public(key)


def test_we_open_libp2p_envelopes_and_seal_the_same_bytes(key):
    pair = create_new_key_pair(raw_seed(key))
    addrs = [multiaddr.Multiaddr(a) for a in ("/ip4/198.18.0.1/tcp/9", "/dns4/example.com/tcp/443/wss")]
    theirs = seal_record(Libp2pPeerRecord(ID.from_pubkey(pair.public_key), addrs, 42), pair.private_key).marshal_envelope()
    record = open_peer_record(theirs)
    assert record == PeerRecord(pid(key), 42, tuple(a.to_bytes() for a in addrs))
    assert seal_peer_record(record, key) == theirs  # Ed25519 is deterministic: same encoding, same bytes


def test_libp2p_envelope_with_a_secp256k1_key_is_refused():
    pair = secp256k1.create_new_key_pair()
    envelope = seal_record(Libp2pPeerRecord(ID.from_pubkey(pair.public_key), [], 1), pair.private_key)
    with pytest.raises(RecordError, match="only Ed25519"):
        open_peer_record(envelope.marshal_envelope())


def test_hand_built_envelope_opens(key):
    body = payload(pid(key), 3, list(ADDRS))
    assert open_peer_record(hand_sealed(key, body)) == make_record(key, 3)
    # the unit tests build their payloads field by field: the same bytes as py-libp2p's classes
    for args in ((pid(key), 3, list(ADDRS)), (pid(key), 99, []), (pid(key), 1, [b"a"] * 33), (b"", 0, [b""])):
        assert field_by_field_payload(*args) == payload(*args), args
