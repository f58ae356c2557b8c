"""Channel reservations as signed DHT records: who reserved a name first, and only they free it.

A reservation is signed by the node that made it (its identity key, domain below) and stored in
the DHT under `/channel/<sha256 of the name>`; nodes look it up when a channel opens on them, and
one node where it is open (its keeper, relay.py) puts it again every KEEP seconds, so it lives
while the channel is open anywhere and lapses RECORD_TTL after it closed everywhere.

    {"channel": "<name>", "owner": "<peer ID>", "at": <ms>, "verifier": "<64 hex>" | "",
     "released": false, "sig": "<base64 Ed25519 over signed_bytes>"}

`verifier` is derived from the channel's password (sealing.py), never the password or anything
that opens the channel's messages. A *release* (`released: true`) is the owner's word that the
name is free again; only the owner's key can make one.

Stores and readers apply the first-come rule of overlay/core/firstcome.py: no `at` far ahead, a
settled reservation yields only to its owner's release, concurrent ones end on one winner, and
readers believe what most of the k closest stores hold.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlay.core import firstcome
from overlay.core.errors import DecodeError, RecordError
from overlay.core.jsonwire import loads
from overlay.core.records import peer_id_from_str, public_key_from_peer_id

DOMAIN = b"overlay-channel-reservation-v1\0"
NAMESPACE = b"channel"
SETTLE = firstcome.SETTLE
RECORD_TTL = 600.0  # a reservation nobody puts again lapses after this long
KEEP = 120.0  # the nodes where a channel is open put its reservation again this often
MAX_RECORD = 2048
MAX_NAME = 128


def reservation_key(name: str) -> bytes:
    return b"/" + NAMESPACE + b"/" + hashlib.sha256(name.encode()).digest()


@dataclass(frozen=True)
class Reservation:
    channel: str
    owner: str  # peer ID of the node that reserved
    at: int  # wall-clock ms at the owner
    verifier: str = ""  # "" for a channel without password
    released: bool = False
    sig: str = ""

    def to_json(self) -> dict:
        return {"channel": self.channel, "owner": self.owner, "at": self.at, "verifier": self.verifier,
                "released": self.released, "sig": self.sig}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def signed_bytes(r: Reservation) -> bytes:
    fields = (r.channel, r.owner, str(r.at), r.verifier, "1" if r.released else "0")
    return DOMAIN + b"".join(len(f).to_bytes(4, "big") + f for f in (x.encode() for x in fields))


def sign(key: Ed25519PrivateKey, r: Reservation) -> Reservation:
    return replace(r, sig=base64.b64encode(key.sign(signed_bytes(r))).decode())


def _hex(value: object) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) == 64 and all(c in "0123456789abcdef" for c in value)))


def parse(obj: object) -> Reservation:
    """A reservation from parsed JSON (a DHT value or a command's data); DecodeError if malformed.
    The signature is not checked here: `verify`."""
    if not isinstance(obj, dict):
        raise DecodeError("reservation: expected an object")
    name, owner, at, verifier = obj.get("channel"), obj.get("owner"), obj.get("at"), obj.get("verifier", "")
    released, sig = obj.get("released", False), obj.get("sig")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise DecodeError(f"reservation: channel must be 1-{MAX_NAME} printable characters")
    if not isinstance(owner, str) or not 1 <= len(owner) <= 128 or not owner.isascii():
        raise DecodeError("reservation: owner must be a peer ID")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at < 2**63:
        raise DecodeError("reservation: at must be wall-clock milliseconds")
    if not _hex(verifier) or not isinstance(released, bool) or not isinstance(sig, str) or len(sig) > 100:
        raise DecodeError("reservation: verifier is 64 hex or empty, released a boolean, sig base64")
    return Reservation(name, owner, at, verifier, released, sig)


def decode(raw: bytes) -> Reservation:
    if len(raw) > MAX_RECORD:
        raise DecodeError(f"reservation of {len(raw)} bytes exceeds {MAX_RECORD}")
    return parse(loads(raw, "reservation"))


def verify(r: Reservation) -> bool:
    """Whether `sig` is the owner's signature (the key its peer ID embeds)."""
    try:
        public_key_from_peer_id(peer_id_from_str(r.owner)).verify(base64.b64decode(r.sig, validate=True), signed_bytes(r))
    except (RecordError, InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def resolve(values: Iterable[bytes], verified: Callable[[Reservation], bool] = verify) -> Reservation | None:
    """The reservation a reader believes of a lookup's values (firstcome.resolve); None when
    there is none or it is a release."""
    records = []
    for raw in values:
        try:
            record = decode(raw)
        except DecodeError:
            continue
        if verified(record):
            records.append(record)
    best, _ = firstcome.resolve(records)
    return None if best is None or best.released else best


class ReservationValidator:
    """The DHT validator of the `/channel/` namespace (kademlia/store.py's Validator: validity,
    the store's first-come choice, the records' own lifetime)."""

    def __init__(self, wall_ms: Callable[[], int], verified: Callable[[Reservation], bool] = verify) -> None:
        self.wall_ms = wall_ms
        self.verified = verified

    def _record(self, key: bytes, value: bytes) -> Reservation:
        try:
            record = decode(value)
        except DecodeError as e:
            raise RecordError(str(e)) from None
        if reservation_key(record.channel) != key:
            raise RecordError("reservation: stored under another channel's key")
        if firstcome.ahead(record, self.wall_ms()):
            raise RecordError("reservation: made in the future")
        if not self.verified(record):
            raise RecordError("reservation: not signed by its owner")
        return record

    def validate(self, key: bytes, value: bytes) -> None:
        self._record(key, value)

    def ttl(self, key: bytes) -> float:
        return RECORD_TTL

    def select(self, key: bytes, values: list[bytes]) -> int:
        """The value a store keeps of [held, new]: the first-come rule."""
        records = []
        for value in values:
            try:
                records.append(self._record(key, value))
            except RecordError:
                records.append(None)
        best = firstcome.choose(records, self.wall_ms())
        if best < 0:
            raise RecordError("no valid reservation among the values")
        return best
