"""Bounded stores for DHT values and provider records, expiring on an explicit clock.

Both stores have hard caps so that a peer flooding PUT_VALUE or ADD_PROVIDER cannot grow a
node's memory without bound, and quotas per peer (the connection's authenticated peer, not a
claim in the message) and per address group (the /24 or /48 of the connection's remote IP,
overlay.core.addrs.address_group), so that one peer, or many identities from one network, cannot
fill the caps and lock others out. A provider keeps at most `max_addrs` addresses of at most
`MAX_ADDR_BYTES` each. What a store refuses, and why (`refusal`), is counted by the caller.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from overlay.core.errors import RecordError
from overlay.core.peer import PeerInfo


class Quota:
    """How many entries each holder (a peer, an address group) has here, against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: Counter[object] = Counter()

    def full(self, holder: object) -> bool:
        return holder is not None and self._held[holder] >= self.limit

    def add(self, holder: object) -> None:
        if holder is not None:
            self._held[holder] += 1

    def remove(self, holder: object) -> None:
        if holder is not None:
            self._held[holder] -= 1
            if self._held[holder] <= 0:
                del self._held[holder]


class Validator(Protocol):
    """Decides which values the DHT stores and believes.

    `select` also decides what a store keeps, given [held, new] in that order. A validator may
    have `ttl(key) -> float | None`: its records' lifetime, if not the store's.
    """

    def validate(self, key: bytes, value: bytes) -> None:
        """Raise RecordError when `value` is not acceptable under `key`."""

    def select(self, key: bytes, values: list[bytes]) -> int:
        """Index of the best of several valid values for one key."""


MAX_ADDR_BYTES = 256  # a binary multiaddr longer than this is not an address we would dial
SWEEP_EVERY = 1.0  # seconds: a full store looks for expired entries at most this often (a sweep visits all)


class _Bounded:
    """What both stores share: quotas per peer and per address group, why the last entry was
    refused, and a sweep for expired entries at most once per SWEEP_EVERY while one is full."""

    def __init__(self, max_per_peer: int, max_per_group: int) -> None:
        self.refusal = ""
        self._peers, self._groups = Quota(max_per_peer), Quota(max_per_group)
        self._swept = -SWEEP_EVERY

    def expire(self, now: float) -> int:
        raise NotImplementedError

    def _full(self, full: Callable[[], bool], now: float) -> bool:
        """Whether `full()` holds, after a sweep if it did."""
        if full() and now >= self._swept + SWEEP_EVERY:
            self._swept = now
            self.expire(now)
        return full()

    def _refused(self, owner: bytes | None, group: str | None, now: float, new_owner: bool, new_group: bool) -> str:
        """The quota a new entry of `owner` from `group` would exceed ("" for none)."""
        if new_owner and self._full(lambda: self._peers.full(owner), now):
            return "quota"
        if new_group and self._full(lambda: self._groups.full(group), now):
            return "group quota"
        return ""


@dataclass
class _Stored:
    value: bytes
    expires: float
    owner: bytes | None  # the peer that stored it; None: this node
    group: str | None  # the address group it came from; None: this node, or not known


class RecordStore(_Bounded):
    """Records by key. A peer holds at most `max_per_peer` of them (the records it stored last),
    an address group `max_per_group`; this node's own are not counted."""

    def __init__(self, validator: Validator, ttl: float, max_records: int = 10_000, max_per_peer: int = 256,
                 max_per_group: int = 1024) -> None:
        super().__init__(max_per_peer, max_per_group)
        self.validator = validator
        self.ttl = ttl
        self.max_records = max_records
        self._records: OrderedDict[bytes, _Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: bytes, value: bytes, now: float, owner: bytes | None = None, group: str | None = None) -> bool:
        """Store `value` for `owner` (from `group`) if valid and at least as good as what is held;
        False if refused (`refusal`: "older", "quota", "group quota" or "full"). Raises
        RecordError for an invalid value."""
        self.validator.validate(key, value)
        held = self._records.get(key) if self.get(key, now) is not None else None
        if held is not None and held.value != value and self.validator.select(key, [held.value, value]) == 0:
            self.refusal = "older"
            return False
        self.refusal = self._refused(owner, group, now, held is None or held.owner != owner, held is None or held.group != group)
        if not self.refusal and held is None and self._full(lambda: len(self._records) >= self.max_records, now):
            self.refusal = "full"
        if self.refusal:
            return False
        if key in self._records:
            self._drop(key)
        ttl = getattr(self.validator, "ttl", lambda key: None)(key) or self.ttl
        self._records[key] = _Stored(value, now + ttl, owner, group)
        self._peers.add(owner)
        self._groups.add(group)
        return True

    def _drop(self, key: bytes) -> None:
        stored = self._records.pop(key)
        self._peers.remove(stored.owner)
        self._groups.remove(stored.group)

    def get(self, key: bytes, now: float) -> bytes | None:
        stored = self._records.get(key)
        if stored is None:
            return None
        if stored.expires <= now:
            self._drop(key)
            return None
        return stored.value

    def expire(self, now: float) -> int:
        dead = [k for k, s in self._records.items() if s.expires <= now]
        for k in dead:
            self._drop(k)
        return len(dead)


def provider_key(namespace: bytes, name: bytes) -> bytes:
    """`/<namespace>/<sha256 of name>`: a provider key says what it is for, so a node can take
    provider records only for what the overlay defines (`provider_namespace`)."""
    return b"/" + namespace + b"/" + hashlib.sha256(name).digest()


def provider_namespace(key: bytes) -> bytes | None:
    """The namespace of a key made by `provider_key`, None for any other key."""
    parts = key.split(b"/", 2)
    if len(parts) < 3 or parts[0] != b"" or not parts[1] or len(parts[2]) != 32:
        return None
    return parts[1]


class ProviderStore(_Bounded):
    """Providers by key, the most recent first: at most `max_entries` in all, `max_per_key` per
    key; a peer provides at most `max_per_peer` keys here and an address group `max_per_group`,
    with at most `max_addrs` addresses each (this node's own entries are not limited)."""

    def __init__(
        self, ttl: float, max_keys: int = 10_000, max_per_key: int = 64, max_per_peer: int = 256, max_addrs: int = 8,
        local: bytes = b"", max_entries: int = 20_000, max_per_group: int = 1024,
    ) -> None:
        super().__init__(max_per_peer, max_per_group)
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self.max_addrs = max_addrs
        self.local = local
        # key -> provider's peer ID -> (its PeerInfo, when it expires, the address group it came from)
        self._providers: dict[bytes, OrderedDict[bytes, tuple[PeerInfo, float, str | None]]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def add(self, key: bytes, provider: PeerInfo, now: float, group: str | None = None) -> bool:
        """Keep `provider` for `key` (from `group`); False if refused (`refusal`: "quota",
        "group quota" or "full")."""
        peer = provider.peer_id
        held = self._providers.get(key, {}).get(peer)
        if peer != self.local:
            self.refusal = self._refused(peer, group, now, held is None, held is None or held[2] != group)
            if self.refusal:
                return False
        if held is None and self._full(lambda: (key not in self._providers and len(self._providers) >= self.max_keys)
                                       or self._total >= self.max_entries, now):
            self.refusal = "full"
            return False
        entries = self._providers.setdefault(key, OrderedDict())  # looked up again: a sweep may have emptied it
        old = entries.pop(peer, None)
        if old is not None:
            self._uncount(peer, old[2])
        elif len(entries) >= self.max_per_key:
            evicted, (_, _, evicted_group) = entries.popitem(last=False)
            self._uncount(evicted, evicted_group)
        addrs = tuple(a for a in provider.addrs if len(a) <= MAX_ADDR_BYTES)[: self.max_addrs]
        entries[peer] = (provider._replace(addrs=addrs), now + self.ttl, group)
        self._total += 1
        self._peers.add(peer)
        self._groups.add(group)
        return True

    def _uncount(self, peer: bytes, group: str | None) -> None:
        self._total -= 1
        self._peers.remove(peer)
        self._groups.remove(group)

    def remove(self, key: bytes, provider: bytes) -> None:
        entries = self._providers.get(key)
        if entries is not None:
            held = entries.pop(provider, None)
            if held is not None:
                self._uncount(provider, held[2])
            if not entries:
                del self._providers[key]

    def get(self, key: bytes, now: float, limit: int) -> list[PeerInfo]:
        entries = self._providers.get(key, {})
        live = [p for p, expires, _ in reversed(entries.values()) if expires > now]
        return live[:limit]

    def expire(self, now: float) -> int:
        removed = 0
        for key in list(self._providers):
            entries = self._providers[key]
            dead = [(pid, group) for pid, (_, expires, group) in entries.items() if expires <= now]
            for pid, group in dead:
                del entries[pid]
                self._uncount(pid, group)
            removed += len(dead)
            if not entries:
                del self._providers[key]
        return removed


class NamespacedValidator:
    """Routes validation by the key's first path segment (`/peer/...` -> the peer validator).

    Keys of unknown namespaces are refused: the DHT only stores what the overlay defines.
    """

    def __init__(self, validators: dict[bytes, Validator]) -> None:
        self._validators = validators

    def _for(self, key: bytes) -> Validator:
        parts = key.split(b"/", 2)
        if len(parts) < 3 or parts[0] != b"" or parts[1] not in self._validators:
            raise RecordError(f"no validator for key namespace of {key[:32]!r}")
        return self._validators[parts[1]]

    def validate(self, key: bytes, value: bytes) -> None:
        self._for(key).validate(key, value)

    def select(self, key: bytes, values: list[bytes]) -> int:
        return self._for(key).select(key, values)

    def ttl(self, key: bytes) -> float | None:
        ttl = getattr(self._for(key), "ttl", None)
        return ttl(key) if ttl is not None else None
