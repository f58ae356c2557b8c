"""Kademlia routing table: k-buckets keyed by common-prefix length, with liveness and replacement.

Keys live in the 256-bit space of SHA-256 (as in libp2p's Kademlia): a peer's position is
sha256(peer_id), a record's is sha256(key), distance is XOR. A full bucket never evicts a live
contact for a new one (old contacts are the stable ones); newcomers wait in a small replacement
cache and take the place of contacts that fail twice in a row. When a bucket is full and its
least recently seen contact has been quiet for `stale_after`, the table asks for a ping of it.

Address diversity (as go-libp2p-kad-dht's filter): a contact's `group` is the /24 or /48 of the
connection it answered on ("" when unknown: relayed, or an exempt network such as loopback). A
bucket holds at most `max_per_group_bucket` contacts of one group and the table
`max_per_group`, so peers from one network, however many identities they make, cannot fill a
bucket or surround the node's own position; `admits` says whether a newcomer may enter.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from overlay.core.peer import PeerInfo

KEY_BITS = 256


@functools.lru_cache(maxsize=1 << 16)
def key_position(key: bytes) -> int:
    """Position of a key (or peer ID) in the XOR metric space (cached: the same peer IDs come
    back in every answer, and a hash each time was a measurable share of a lookup)."""
    return int.from_bytes(hashlib.sha256(key).digest(), "big")


def common_prefix_length(a: int, b: int) -> int:
    return KEY_BITS - (a ^ b).bit_length()


class Contact:
    """A peer in the table. `info` is the peer as it goes on the wire, kept whole so that
    answers reuse it rather than build it anew for every request."""

    __slots__ = ("peer_id", "info", "position", "last_seen", "failures", "group")

    def __init__(self, peer_id: bytes, addrs: tuple[bytes, ...], position: int, last_seen: float, group: str = "") -> None:
        self.peer_id = peer_id
        self.group = group
        self.info = PeerInfo(peer_id, addrs)
        self.position = position
        self.last_seen = last_seen
        self.failures = 0

    @property
    def addrs(self) -> tuple[bytes, ...]:
        return self.info.addrs

    def set_addrs(self, addrs: tuple[bytes, ...]) -> None:
        if addrs and addrs != self.info.addrs:
            self.info = PeerInfo(self.peer_id, addrs)


@dataclass
class _Bucket:
    contacts: OrderedDict[bytes, Contact] = field(default_factory=OrderedDict)
    replacements: OrderedDict[bytes, Contact] = field(default_factory=OrderedDict)


class RoutingTable:
    """k-buckets around `local_id`; contacts ordered from least to most recently seen."""

    def __init__(
        self,
        local_id: bytes,
        k: int = 20,
        max_failures: int = 2,
        stale_after: float = 60.0,
        max_per_group_bucket: int = 2,
        max_per_group: int = 6,
    ) -> None:
        self.local_id = local_id
        self.max_per_group_bucket = max_per_group_bucket
        self.max_per_group = max_per_group
        self._groups: Counter[str] = Counter()  # contacts (not replacements) by group
        self.local_position = key_position(local_id)
        self.k = k
        self.max_failures = max_failures
        self.stale_after = stale_after
        self._buckets: dict[int, _Bucket] = {}
        self._size = 0
        self.last_useful: dict[int, float] = {}  # bucket -> when one of its peers last answered

    def __len__(self) -> int:
        return self._size

    def __contains__(self, peer_id: bytes) -> bool:
        return self.get(peer_id) is not None

    def bucket_index(self, position: int) -> int:
        return common_prefix_length(self.local_position, position)

    def get(self, peer_id: bytes) -> Contact | None:
        bucket = self._buckets.get(self.bucket_index(key_position(peer_id)))
        return bucket.contacts.get(peer_id) if bucket else None

    def admits(self, peer_id: bytes, group: str) -> bool:
        """Whether `peer_id`, answering from `group`, may enter (a contact already in always may)."""
        bucket = self._buckets.get(self.bucket_index(key_position(peer_id)))
        if not group or (bucket is not None and peer_id in bucket.contacts):
            return True
        return self._groups[group] < self.max_per_group and (
            bucket is None or self._in_bucket(bucket, group) < self.max_per_group_bucket)

    def observe(self, peer_id: bytes, addrs: tuple[bytes, ...], now: float, group: str = "") -> bytes | None:
        """Record that `peer_id` answered us (it is alive and serves the DHT), from `group`.

        Returns the peer ID of a contact to ping when the bucket is full and its oldest
        contact is stale; the caller reports the ping's outcome with observe() or fail().
        A newcomer the diversity limits do not admit is ignored.
        """
        if peer_id == self.local_id or not self.admits(peer_id, group):
            return None
        position = key_position(peer_id)
        index = self.bucket_index(position)
        self.last_useful[index] = now
        bucket = self._buckets.setdefault(index, _Bucket())
        contact = bucket.contacts.get(peer_id)
        if contact is not None:
            contact.last_seen = now
            contact.failures = 0
            contact.set_addrs(addrs)
            bucket.contacts.move_to_end(peer_id)
            return None
        contact = Contact(peer_id, addrs, position, now, group)
        if len(bucket.contacts) < self.k:
            self._add(bucket, contact)
            bucket.replacements.pop(peer_id, None)
            return None
        bucket.replacements[peer_id] = contact
        bucket.replacements.move_to_end(peer_id)
        while len(bucket.replacements) > self.k:
            bucket.replacements.popitem(last=False)
        oldest = next(iter(bucket.contacts.values()))
        if now - oldest.last_seen >= self.stale_after:
            return oldest.peer_id
        return None

    def update_addrs(self, peer_id: bytes, addrs: tuple[bytes, ...]) -> None:
        """Fresher addresses for a known contact (its liveness ordering is unchanged)."""
        contact = self.get(peer_id)
        if contact is not None:
            contact.set_addrs(addrs)

    def fail(self, peer_id: bytes) -> bool:
        """Record a failed request; evicts after `max_failures` in a row. Returns True if evicted."""
        bucket = self._buckets.get(self.bucket_index(key_position(peer_id)))
        if bucket is None:
            return False
        bucket.replacements.pop(peer_id, None)
        contact = bucket.contacts.get(peer_id)
        if contact is None:
            return False
        contact.failures += 1
        if contact.failures < self.max_failures:
            return False
        self._drop(bucket, contact)
        for newest in reversed(bucket.replacements.values()):  # the newest the limits admit now
            if self.admits(newest.peer_id, newest.group):
                del bucket.replacements[newest.peer_id]
                self._add(bucket, newest)
                break
        return True

    def remove(self, peer_id: bytes) -> None:
        bucket = self._buckets.get(self.bucket_index(key_position(peer_id)))
        if bucket is not None:
            contact = bucket.contacts.get(peer_id)
            if contact is not None:
                self._drop(bucket, contact)
            bucket.replacements.pop(peer_id, None)

    def _add(self, bucket: _Bucket, contact: Contact) -> None:
        bucket.contacts[contact.peer_id] = contact
        self._size += 1
        if contact.group:
            self._groups[contact.group] += 1

    def _drop(self, bucket: _Bucket, contact: Contact) -> None:
        del bucket.contacts[contact.peer_id]
        self._size -= 1
        if contact.group:
            self._groups[contact.group] -= 1
            if self._groups[contact.group] <= 0:
                del self._groups[contact.group]

    @staticmethod
    def _in_bucket(bucket: _Bucket, group: str) -> int:
        return sum(1 for c in bucket.contacts.values() if c.group == group)

    def closest(self, position: int, count: int, exclude: bytes | None = None) -> list[Contact]:
        """The `count` contacts nearest to `position` by XOR distance.

        Buckets are visited nearest first and only those that can hold the answer are sorted
        (a lookup asks this of every peer it meets, and sorting the whole table made it the
        hottest line of the node and the simulator). With d = ours XOR `position` and c its
        leading zero bits: bucket c is nearest (its contacts agree with `position` on c + 1 bits
        or more). Each bucket j deeper than c is wholly nearer than every bucket deeper than j
        when bit j of d is 1, and wholly farther when it is 0: so those with a 1 come next,
        shallowest first, then those with a 0, deepest first. Buckets c - 1 down to 0 are last.
        """
        d = self.local_position ^ position
        c = self.bucket_index(position)
        indices = sorted(self._buckets)
        deeper = [j for j in indices if j > c]
        order = [j for j in indices if j == c] + [j for j in deeper if d >> (KEY_BITS - 1 - j) & 1]
        order += [j for j in reversed(deeper) if not d >> (KEY_BITS - 1 - j) & 1]
        order += [j for j in reversed(indices) if j < c]
        result: list[Contact] = []
        for i in order:
            bucket = self._buckets[i]
            found = [x for x in bucket.contacts.values() if x.peer_id != exclude]
            found.sort(key=lambda x: x.position ^ position)
            result += found[: count - len(result)]
            if len(result) == count:
                break
        return result

    def tree(self, scope: int, per_bucket: int) -> list[tuple[int, list[bytes]]]:
        """For a broadcast over the prefix tree: each non-empty bucket from `scope` down, with
        its `per_bucket` most recently seen contacts. Bucket i's contacts share exactly i bits
        with us, so one of them can cover the subtree of the keys sharing i + 1 bits with it."""
        return [(i, [c.peer_id for c in list(b.contacts.values())[-per_bucket:]])
                for i, b in sorted(self._buckets.items()) if i >= scope and b.contacts]

    def contacts(self) -> list[Contact]:
        return [c for b in self._buckets.values() for c in b.contacts.values()]

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(b.contacts) for i, b in sorted(self._buckets.items()) if b.contacts}

    def deepest_bucket(self) -> int:
        """Highest bucket index holding a contact (-1 when empty): how far refresh must reach."""
        return max((i for i, b in self._buckets.items() if b.contacts), default=-1)
