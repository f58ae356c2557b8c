"""The seven message types of Convex peer messaging as a state machine without I/O: events and `now`
in, actions out (docs/protocols/convex.md).

Payloads (after the frame's type tag; all integers big-endian):

    every message   id u64 | body                      id: chosen by the sender, unique per sender
    BELIEF          body = refs | belief
    QUERY           body = refs | query
    TRANSACT        body = refs | key (32, Ed25519) | seq u64 | tx | signature (64, over seq | tx)
    DATA            body = value                        its ID is SHA-256(value)
    MISSING_DATA    body = SHA-256 of the value wanted
    STATUS          body = empty
    RESULT          body = ref id u64 | code u8 | result
    refs            = count u8 | count x SHA-256 of values the message needs

What Convex asks of each type, and how:
- BELIEF goes to the application once per distinct belief (merges are idempotent, so repeats are
  dropped, counted), and beliefs are shed first under load.
- DATA fills a content-addressed store (bounded, oldest out first). A message whose refs are not
  all in the store asks its sender with MISSING_DATA, waits SUSPEND_FOR seconds, and is
  discarded (counted) if the data does not come; MISSING_DATA is answered with DATA when held.
- QUERY and TRANSACT go to the application, which answers with `result()`; a TRANSACT is
  refused (RESULT BAD_SIGNATURE / SEQUENCE_USED) unless its signature verifies and its sequence
  number is above the last one accepted for its key.
- STATUS is answered at once from the cached status (`set_status`).
- Load: at most `max_pending` messages wait for the application. Beyond that a QUERY or
  TRANSACT is answered RESULT TEMPORARY_FAILURE and a BELIEF is dropped. Messages from trusted
  peers may use a reserve of `trusted_reserve` more places, so they are shed last.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from overlay.core.errors import DecodeError
from overlay.peermsg.frames import PeerMessageType

SUSPEND_FOR = 5.0
MAX_REFS = 64
MAX_STORE_BYTES = 64 << 20
MAX_SEEN_BELIEFS = 10_000
MAX_SUSPENDED = 1_000
MAX_KEYS = 100_000  # sequence numbers remembered


class Code(IntEnum):
    OK = 0
    ERROR = 1
    TEMPORARY_FAILURE = 2
    BAD_SIGNATURE = 3
    SEQUENCE_USED = 4


@dataclass(frozen=True)
class SendPeerMessage:
    peer: str
    tag: PeerMessageType
    payload: bytes


@dataclass(frozen=True)
class DeliverPeerMessage:
    """To the application: BELIEF, QUERY, TRANSACT (its body without refs; a TRANSACT's
    signature and sequence number already checked) or RESULT."""

    peer: str
    tag: PeerMessageType
    id: int
    body: bytes


PeerMessageAction = SendPeerMessage | DeliverPeerMessage


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def message(tag: PeerMessageType, id: int, body: bytes) -> tuple[PeerMessageType, bytes]:
    return tag, struct.pack(">Q", id) + body


def with_refs(refs: list[bytes], content: bytes) -> bytes:
    if len(refs) > MAX_REFS or any(len(r) != 32 for r in refs):
        raise ValueError(f"at most {MAX_REFS} refs of 32 bytes")
    return bytes([len(refs)]) + b"".join(refs) + content


def transaction(key_bytes: bytes, seq: int, tx: bytes, signature: bytes) -> bytes:
    return key_bytes + struct.pack(">Q", seq) + tx + signature


def signed_part(seq: int, tx: bytes) -> bytes:
    return struct.pack(">Q", seq) + tx


def _split_refs(body: bytes) -> tuple[list[bytes], bytes]:
    if not body:
        raise DecodeError("refs missing")
    count = body[0]
    if count > MAX_REFS or len(body) < 1 + 32 * count:
        raise DecodeError("refs truncated or too many")
    return [body[1 + 32 * i : 33 + 32 * i] for i in range(count)], body[1 + 32 * count :]


@dataclass
class _Suspended:
    peer: str
    tag: PeerMessageType
    id: int
    body: bytes
    missing: set[bytes]
    until: float


@dataclass
class PeerMessageCounters:
    malformed: int = 0
    duplicate_beliefs: int = 0
    shed: int = 0
    discarded_missing_data: int = 0
    refused_transactions: int = 0
    suspended_overflow: int = 0


@dataclass
class PeerMessages:
    trusted: frozenset[str] = frozenset()
    max_pending: int = 1_000
    trusted_reserve: int = 200
    counters: PeerMessageCounters = field(default_factory=PeerMessageCounters)
    pending: int = 0  # delivered, not yet answered or released by the application
    status: bytes = b""
    _store: OrderedDict[bytes, bytes] = field(default_factory=OrderedDict)
    _store_bytes: int = 0
    _beliefs: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _suspended: list[_Suspended] = field(default_factory=list)
    _last_seq: OrderedDict[bytes, int] = field(default_factory=OrderedDict)

    # ---- the application's side ----

    def set_status(self, status: bytes) -> None:
        self.status = status

    def released(self) -> None:
        """The application finished with a delivered message (answered or not)."""
        self.pending = max(0, self.pending - 1)

    def result(self, peer: str, ref: int, code: Code, result: bytes, id: int) -> SendPeerMessage:
        """The RESULT answering message `ref` of `peer`."""
        self.released()
        return SendPeerMessage(peer, *message(PeerMessageType.RESULT, id, struct.pack(">QB", ref, code) + result))

    def put(self, value: bytes) -> bytes:
        """Keep a value others may ask for; returns its ID."""
        key = digest(value)
        if key not in self._store:
            self._store[key] = value
            self._store_bytes += len(value)
            while self._store_bytes > MAX_STORE_BYTES:
                _, old = self._store.popitem(last=False)
                self._store_bytes -= len(old)
        return key

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(key)

    # ---- events ----

    def on_message(self, peer: str, tag: int, payload: bytes, now: float) -> list[PeerMessageAction]:
        """A complete message from `peer` (as the frame reader returns it)."""
        try:
            if len(payload) < 8:
                raise DecodeError("no message id")
            (id,) = struct.unpack_from(">Q", payload)
            body = payload[8:]
            kind = PeerMessageType(tag)
            if kind is PeerMessageType.DATA:
                return self._on_data(body, now)
            if kind is PeerMessageType.MISSING_DATA:
                value = self._store.get(body) if len(body) == 32 else None
                return [SendPeerMessage(peer, *message(PeerMessageType.DATA, id, value))] if value is not None else []
            if kind is PeerMessageType.STATUS:
                return [SendPeerMessage(peer, *message(PeerMessageType.RESULT, id, struct.pack(">QB", id, Code.OK) + self.status))]
            if kind is PeerMessageType.RESULT:
                if len(body) < 9:
                    raise DecodeError("RESULT too short")
                return [DeliverPeerMessage(peer, kind, id, body)]
            refs, content = _split_refs(body)
        except (DecodeError, ValueError):  # unknown tag, short payload, bad refs
            self.counters.malformed += 1
            return []
        return self._gate(peer, kind, id, refs, content, now)

    def tick(self, now: float) -> list[PeerMessageAction]:
        """Discard suspended messages whose data did not come in time."""
        kept = []
        for s in self._suspended:
            if s.until < now:
                self.counters.discarded_missing_data += 1
            else:
                kept.append(s)
        self._suspended = kept
        return []

    # ---- inside ----

    def _on_data(self, value: bytes, now: float) -> list[PeerMessageAction]:
        key = self.put(value)
        actions: list[PeerMessageAction] = []
        waiting = []
        for s in self._suspended:
            s.missing.discard(key)
            if s.missing:
                waiting.append(s)
            elif s.until >= now:
                actions += self._accept(s.peer, s.tag, s.id, s.body)
        self._suspended = waiting
        return actions

    def _gate(self, peer: str, kind: PeerMessageType, id: int, refs: list[bytes], content: bytes, now: float) -> list[PeerMessageAction]:
        missing = {r for r in refs if r not in self._store}
        if not missing:
            return self._accept(peer, kind, id, content)
        if len(self._suspended) >= MAX_SUSPENDED:
            self.counters.suspended_overflow += 1
            return []
        self._suspended.append(_Suspended(peer, kind, id, content, missing, now + SUSPEND_FOR))
        return [SendPeerMessage(peer, *message(PeerMessageType.MISSING_DATA, id, r)) for r in sorted(missing)]

    def _accept(self, peer: str, kind: PeerMessageType, id: int, content: bytes) -> list[PeerMessageAction]:
        if kind is PeerMessageType.BELIEF:
            key = digest(content)
            if key in self._beliefs:
                self.counters.duplicate_beliefs += 1
                return []
            if not self._room(peer):
                self.counters.shed += 1
                return []
            self._beliefs[key] = None
            while len(self._beliefs) > MAX_SEEN_BELIEFS:
                self._beliefs.popitem(last=False)
            self.pending += 1
            return [DeliverPeerMessage(peer, kind, id, content)]
        if kind is PeerMessageType.TRANSACT:
            refused = self._check_transaction(content)
            if refused is not None:
                self.counters.refused_transactions += 1
                return [SendPeerMessage(peer, *message(PeerMessageType.RESULT, id, struct.pack(">QB", id, refused)))]
        if not self._room(peer):
            self.counters.shed += 1
            return [SendPeerMessage(peer, *message(PeerMessageType.RESULT, id, struct.pack(">QB", id, Code.TEMPORARY_FAILURE)))]
        self.pending += 1
        return [DeliverPeerMessage(peer, kind, id, content)]

    def _room(self, peer: str) -> bool:
        limit = self.max_pending + (self.trusted_reserve if peer in self.trusted else 0)
        return self.pending < limit

    def _check_transaction(self, content: bytes) -> Code | None:
        if len(content) < 32 + 8 + 64:
            return Code.BAD_SIGNATURE
        key_bytes, (seq,), tx, signature = content[:32], struct.unpack_from(">Q", content, 32), content[40:-64], content[-64:]
        try:
            Ed25519PublicKey.from_public_bytes(key_bytes).verify(signature, signed_part(seq, tx))
        except (InvalidSignature, ValueError):
            return Code.BAD_SIGNATURE
        if seq <= self._last_seq.get(key_bytes, -1):
            return Code.SEQUENCE_USED
        self._last_seq[key_bytes] = seq
        self._last_seq.move_to_end(key_bytes)
        while len(self._last_seq) > MAX_KEYS:
            self._last_seq.popitem(last=False)
        return None
