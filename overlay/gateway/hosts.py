"""Who hosts a degas_id: a signed DHT record, first come. A core without I/O (times are explicit
wall-clock milliseconds).

The node an instance registers at (its *host*) signs a record with its identity key and stores it
in the DHT under `/degas/<degas_id>` (16 bytes), again every KEEP seconds while the instance stays
there; when the instance leaves, the host stores a *release*. Stores let a record lapse RECORD_TTL
after it was last put (`HostRecordValidator.ttl`).

    value   = field 1: payload, field 2: signature (Ed25519, 64 bytes)       (protobuf wire format)
    payload = field 1: degas_id (16 bytes), field 2: host (binary peer ID),
              field 3: at (wall-clock ms when the host claimed it), field 4: released (0 or 1)
    signed  = DOMAIN + payload

The key that verifies is the one the host's peer ID embeds, so a node can announce only itself:
a record naming another node, or unsigned, is invalid and no store keeps it.

First come: every store and reader applies overlay/core/firstcome.py (no `at` far ahead; a
settled claim yields only to its host's own release; concurrent claims end on one winner; a
reader believes the host most of the k closest stores name, and that host's latest record).
Channel reservations (overlay/channels/reservation.py) follow the same rule.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core import firstcome
from overlay.core.errors import DecodeError, RecordError
from overlay.core.protobuf import expect_bytes, expect_int, field_bytes, field_varint, iter_fields
from overlay.core.records import peer_id_from_public_key, public_key_from_peer_id
from overlay.kademlia.store import provider_key

DOMAIN = b"overlay-degas-host-v1\x00"
NAMESPACE = b"degas"
KEY_PREFIX = b"/" + NAMESPACE + b"/"
DEGAS_ID_SIZE = 16
RECORD_TTL = 600.0  # a record nobody puts again lapses after this long
KEEP = 120.0  # the host puts its claim again this often
MAX_RECORD = 512


def host_key(degas_id: bytes) -> bytes:
    return KEY_PREFIX + degas_id


ACCOUNT_NAMESPACE = b"degas-account"


def account_key(account_id: bytes) -> bytes:
    """The provider key under which the nodes with clients of an account are found (a hint:
    the gateway believes a node for an account only once it shows the account's proof)."""
    return provider_key(ACCOUNT_NAMESPACE, account_id)


@dataclass(frozen=True)
class HostRecord:
    degas_id: bytes
    host: bytes  # binary peer ID of the node the instance is registered at
    at: int  # wall-clock ms at the host when it claimed (or released) the degas_id
    released: bool = False

    @property
    def owner(self) -> bytes:  # a firstcome.Claim's owner
        return self.host

    def payload(self) -> bytes:
        return (field_bytes(1, self.degas_id) + field_bytes(2, self.host) + field_varint(3, self.at)
                + field_varint(4, int(self.released)))


def seal_host_record(record: HostRecord, key: Ed25519PrivateKey) -> bytes:
    """Sign `record` as its host; only the host's own key can (the validator checks that)."""
    if peer_id_from_public_key(key.public_key()) != record.host:
        raise RecordError("a host record must be signed by the host's key")
    if len(record.degas_id) != DEGAS_ID_SIZE or not 0 <= record.at < 2**63:
        raise RecordError("a host record names a 16-byte degas_id and a time in ms")
    payload = record.payload()
    return field_bytes(1, payload) + field_bytes(2, key.sign(DOMAIN + payload))


@functools.lru_cache(maxsize=4096)
def open_host_record(value: bytes) -> HostRecord:
    """The record a value carries if its host signed it; RecordError with the reason otherwise.
    Lookups bring the same values again and again: valid ones are verified once (cached)."""
    if len(value) > MAX_RECORD:
        raise RecordError(f"host record of {len(value)} bytes exceeds {MAX_RECORD}")
    try:
        outer = {n: expect_bytes(n, t, v) for n, t, v in iter_fields(value) if n in (1, 2)}
        if set(outer) != {1, 2}:
            raise RecordError("host record lacks its payload or signature")
        fields: dict[int, int | bytes] = {}
        for number, wire_type, v in iter_fields(outer[1]):
            if number in (1, 2):
                fields[number] = expect_bytes(number, wire_type, v)
            elif number in (3, 4):
                fields[number] = expect_int(number, wire_type, v)
    except DecodeError as e:
        raise RecordError(f"malformed host record: {e}") from None
    degas_id, host = fields.get(1, b""), fields.get(2, b"")
    at, released = fields.get(3, 0), fields.get(4, 0)
    if len(degas_id) != DEGAS_ID_SIZE or not host or released not in (0, 1) or at >= 2**63:
        raise RecordError("host record: a 16-byte degas_id, a host, a time and released 0 or 1")
    try:
        public_key_from_peer_id(host).verify(outer[2], DOMAIN + outer[1])
    except InvalidSignature:
        raise RecordError("host record not signed by the host it names") from None
    return HostRecord(degas_id, host, at, bool(released))


def validate_host_record(key: bytes, value: bytes, now_ms: int) -> HostRecord:
    """The record if it is valid under `key` at `now_ms`; RecordError otherwise."""
    record = open_host_record(value)
    if host_key(record.degas_id) != key:
        raise RecordError("host record stored under another degas_id's key")
    if firstcome.ahead(record, now_ms):
        raise RecordError("host record made in the future")
    return record


def resolve(values: Iterable[bytes], key: bytes, now_ms: int) -> tuple[HostRecord | None, int]:
    """What a reader believes of a lookup's values (firstcome.resolve: a release is returned as
    such), and how many valid values named another host (outvoted)."""
    records = []
    for value in values:
        try:
            records.append(validate_host_record(key, value, now_ms))
        except RecordError:
            continue
    return firstcome.resolve(records)


class HostRecordValidator:
    """The DHT validator of the `/degas/` namespace (kademlia/store.py's Validator: validity and
    the store's first-come choice; `ttl`, the records' own lifetime)."""

    def __init__(self, wall_ms: Callable[[], int]) -> None:
        self.wall_ms = wall_ms

    def validate(self, key: bytes, value: bytes) -> None:
        validate_host_record(key, value, self.wall_ms())

    def ttl(self, key: bytes) -> float:
        return RECORD_TTL

    def select(self, key: bytes, values: list[bytes]) -> int:
        """The value a store keeps of [held, new]: the first-come rule."""
        now, records = self.wall_ms(), []
        for value in values:
            try:
                records.append(validate_host_record(key, value, now))
            except RecordError:
                records.append(None)
        best = firstcome.choose(records, now)
        if best < 0:
            raise RecordError("no valid host record among the values")
        return best
