"""Degas host records without I/O (overlay/gateway/hosts.py): only the host signs its own claim,
a store keeps the first claim, and a reader believes what most stores hold (the rule itself:
test_firstcome.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.errors import RecordError
from overlay.core.protobuf import field_bytes
from overlay.core.records import peer_id_from_public_key
from overlay.core.firstcome import SKEW
from overlay.gateway.hosts import (
    DOMAIN, HostRecord, HostRecordValidator, host_key, open_host_record, resolve, seal_host_record, validate_host_record,
)
from overlay.kademlia.store import RecordStore

DEGAS = b"D" * 16
KEY = host_key(DEGAS)
T = 1_700_000_000_000  # ms
D_KEY, B_KEY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
D, B = peer_id_from_public_key(D_KEY.public_key()), peer_id_from_public_key(B_KEY.public_key())


def claim(host: bytes, at: int, released: bool = False, degas_id: bytes = DEGAS) -> HostRecord:
    return HostRecord(degas_id, host, at, released)


def sealed(record: HostRecord) -> bytes:
    return seal_host_record(record, D_KEY if record.host == D else B_KEY)


def test_a_record_opens_only_as_its_host_signed_it():
    record = claim(D, T)
    value = sealed(record)
    assert open_host_record(value) == record and validate_host_record(KEY, value, T) == record
    assert value.startswith(field_bytes(1, record.payload()))
    with pytest.raises(RecordError):
        seal_host_record(claim(D, T), B_KEY)  # b cannot sign for d
    foreign = field_bytes(1, record.payload()) + field_bytes(2, B_KEY.sign(DOMAIN + record.payload()))
    unsigned = field_bytes(1, record.payload()) + field_bytes(2, bytes(64))
    undomained = field_bytes(1, record.payload()) + field_bytes(2, D_KEY.sign(record.payload()))
    tampered = field_bytes(1, claim(D, T - 60_000).payload()) + value[-66:]
    for bad in (foreign, unsigned, undomained, tampered, value[:-1], b"", b"\xff" * 40):
        with pytest.raises(RecordError):
            open_host_record(bad)
    with pytest.raises(RecordError):
        validate_host_record(host_key(b"E" * 16), value, T)  # under another degas_id's key
    with pytest.raises(RecordError):
        validate_host_record(KEY, value, T - int(SKEW * 1000) - 1)  # from the future


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_record_or_a_record_error(value):
    try:
        open_host_record(value)
    except RecordError:
        pass


def test_a_reader_believes_what_most_stores_hold():
    now = T + 3600_000
    d, backdated, stray = sealed(claim(D, T)), sealed(claim(B, T - 60_000)), b"not a record"
    assert resolve([d, backdated, d, stray], KEY, now) == (claim(D, T), 1)
    assert resolve([backdated, d], KEY, now) == (claim(B, T - 60_000), 1), "a tie goes to the earlier claim"
    release, again = sealed(claim(D, now, released=True)), sealed(claim(D, now + 1))
    assert resolve([d, release], KEY, now)[0].released, "one host: its latest word"
    assert resolve([release, release, again, backdated], KEY, now + 1) == (claim(D, now + 1), 1), \
        "stores that have not yet taken the host's newest word still vote for the host"
    assert resolve([stray, sealed(claim(D, T, degas_id=b"E" * 16))], KEY, now) == (None, 0)


def test_a_store_keeps_the_first_claim():
    clock = [T]
    store = RecordStore(HostRecordValidator(lambda: clock[0]), ttl=600)
    d = sealed(claim(D, T))
    assert store.put(KEY, d, 0)
    clock[0] = T + 3600_000
    for rival in (claim(B, clock[0]), claim(B, T - 60_000)):
        assert not store.put(KEY, sealed(rival), 1)
    assert store.get(KEY, 1) == d
    release = sealed(claim(D, clock[0] + 1, released=True))
    assert store.put(KEY, release, 2) and store.put(KEY, sealed(claim(B, clock[0] + 2)), 3)
    with pytest.raises(RecordError):
        store.put(KEY, field_bytes(1, claim(B, clock[0]).payload()) + field_bytes(2, bytes(64)), 4)
