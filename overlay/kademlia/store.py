"""Bounded stores for DHT values and provider records, expiring on an explicit clock.

Both stores have hard caps so that a peer flooding PUT_VALUE or ADD_PROVIDER cannot grow a
node's memory without bound, and a quota per peer (the connection's authenticated peer, not a
claim in the message) so that one peer cannot fill the caps and lock others out. A provider keeps
at most `max_addrs` addresses of at most `MAX_ADDR_BYTES` each. What a store refuses, and why
(`refusal`), is counted by the caller.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Protocol

from overlay.core.errors import RecordError
from overlay.core.peer import PeerInfo


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


@dataclass
class _Stored:
    value: bytes
    expires: float
    owner: bytes | None  # the peer that stored it; None: this node


class RecordStore:
    """Records by key. A peer holds at most `max_per_peer` of them (the records it stored last);
    this node's own are not counted."""

    def __init__(self, validator: Validator, ttl: float, max_records: int = 10_000, max_per_peer: int = 256) -> None:
        self.validator = validator
        self.ttl = ttl
        self.max_records = max_records
        self.max_per_peer = max_per_peer
        self.refusal = ""  # why the last put was refused: "older", "full" or "quota"
        self._records: OrderedDict[bytes, _Stored] = OrderedDict()
        self._owned: Counter[bytes] = Counter()
        self._swept = -SWEEP_EVERY

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: bytes, value: bytes, now: float, owner: bytes | None = None) -> bool:
        """Store `value` for `owner` if valid and at least as good as what is held; False if
        refused (`refusal` says why). Raises RecordError for an invalid value."""
        self.validator.validate(key, value)
        held = self._records.get(key) if self.get(key, now) is not None else None
        if held is not None and held.value != value and self.validator.select(key, [held.value, value]) == 0:
            return self._refuse("older")
        if owner is not None and (held is None or held.owner != owner) and self._owned[owner] >= self.max_per_peer:
            self._sweep(now)
            if self._owned[owner] >= self.max_per_peer:
                return self._refuse("quota")
        if held is None and len(self._records) >= self.max_records:
            self._sweep(now)
            if len(self._records) >= self.max_records:
                return self._refuse("full")
        if held is not None:
            self._drop(key)
        ttl = getattr(self.validator, "ttl", lambda key: None)(key) or self.ttl
        self._records[key] = _Stored(value, now + ttl, owner)
        if owner is not None:
            self._owned[owner] += 1
        return True

    def _refuse(self, why: str) -> bool:
        self.refusal = why
        return False

    def _sweep(self, now: float) -> None:
        if now >= self._swept + SWEEP_EVERY:
            self._swept = now
            self.expire(now)

    def _drop(self, key: bytes) -> None:
        owner = self._records.pop(key).owner
        if owner is not None:
            self._owned[owner] -= 1
            if not self._owned[owner]:
                del self._owned[owner]

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


class ProviderStore:
    """Providers by key, the most recent first: at most `max_entries` in all, `max_per_key` per
    key; a peer provides at most `max_per_peer` keys here, with at most `max_addrs` addresses
    (this node's own entries are not limited per peer)."""

    def __init__(
        self, ttl: float, max_keys: int = 10_000, max_per_key: int = 64, max_per_peer: int = 256, max_addrs: int = 8,
        local: bytes = b"", max_entries: int = 20_000,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self.max_per_peer = max_per_peer
        self.max_addrs = max_addrs
        self.local = local
        self.refusal = ""  # why the last add was refused: "full" or "quota"
        self._providers: dict[bytes, OrderedDict[bytes, tuple[PeerInfo, float]]] = {}
        self._provided: Counter[bytes] = Counter()
        self._total = 0
        self._swept = -SWEEP_EVERY

    def __len__(self) -> int:
        return self._total

    def add(self, key: bytes, provider: PeerInfo, now: float) -> bool:
        entries = self._providers.get(key)
        peer = provider.peer_id
        new = entries is None or peer not in entries
        if new and peer != self.local and self._provided[peer] >= self.max_per_peer:
            self._sweep(now)
            if self._provided[peer] >= self.max_per_peer:
                self.refusal = "quota"
                return False
        if new and (len(self._providers) >= self.max_keys or self._total >= self.max_entries):
            self._sweep(now)
            if (entries is None and len(self._providers) >= self.max_keys) or self._total >= self.max_entries:
                self.refusal = "full"
                return False
        if entries is None:
            entries = self._providers[key] = OrderedDict()
        if new and len(entries) >= self.max_per_key:
            self._uncount(entries.popitem(last=False)[0])
        addrs = tuple(a for a in provider.addrs if len(a) <= MAX_ADDR_BYTES)[: self.max_addrs]
        entries[peer] = (provider._replace(addrs=addrs), now + self.ttl)
        entries.move_to_end(peer)
        if new:
            self._provided[peer] += 1
            self._total += 1
        return True

    def _sweep(self, now: float) -> None:
        if now >= self._swept + SWEEP_EVERY:
            self._swept = now
            self.expire(now)

    def _uncount(self, peer: bytes) -> None:
        self._total -= 1
        self._provided[peer] -= 1
        if self._provided[peer] <= 0:
            del self._provided[peer]

    def remove(self, key: bytes, provider: bytes) -> None:
        entries = self._providers.get(key)
        if entries is not None:
            if entries.pop(provider, None) is not None:
                self._uncount(provider)
            if not entries:
                del self._providers[key]

    def get(self, key: bytes, now: float, limit: int) -> list[PeerInfo]:
        entries = self._providers.get(key, {})
        live = [p for p, expires in reversed(entries.values()) if expires > now]
        return live[:limit]

    def expire(self, now: float) -> int:
        removed = 0
        for key in list(self._providers):
            entries = self._providers[key]
            dead = [pid for pid, (_, expires) in entries.items() if expires <= now]
            for pid in dead:
                del entries[pid]
                self._uncount(pid)
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
