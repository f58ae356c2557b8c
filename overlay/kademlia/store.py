"""Bounded stores for DHT values and provider records, expiring on an explicit clock.

Both stores have hard caps so that a peer flooding PUT_VALUE or ADD_PROVIDER cannot grow a
node's memory without bound; what a full store refuses is counted by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
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


@dataclass
class _Stored:
    value: bytes
    expires: float


class RecordStore:
    def __init__(self, validator: Validator, ttl: float, max_records: int = 10_000) -> None:
        self.validator = validator
        self.ttl = ttl
        self.max_records = max_records
        self._records: OrderedDict[bytes, _Stored] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, key: bytes, value: bytes, now: float) -> bool:
        """Store `value` if valid and at least as good as what is held; False if refused.

        Raises RecordError for an invalid value.
        """
        self.validator.validate(key, value)
        held = self.get(key, now)
        if held is not None and held != value and self.validator.select(key, [held, value]) == 0:
            return False
        if held is None and len(self._records) >= self.max_records:
            self.expire(now)
            if len(self._records) >= self.max_records:
                return False
        ttl = getattr(self.validator, "ttl", lambda key: None)(key) or self.ttl
        self._records[key] = _Stored(value, now + ttl)
        self._records.move_to_end(key)
        return True

    def get(self, key: bytes, now: float) -> bytes | None:
        stored = self._records.get(key)
        if stored is None:
            return None
        if stored.expires <= now:
            del self._records[key]
            return None
        return stored.value

    def expire(self, now: float) -> int:
        dead = [k for k, s in self._records.items() if s.expires <= now]
        for k in dead:
            del self._records[k]
        return len(dead)


class ProviderStore:
    def __init__(
        self, ttl: float, max_keys: int = 10_000, max_per_key: int = 64
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._providers: dict[bytes, OrderedDict[bytes, tuple[PeerInfo, float]]] = {}

    def __len__(self) -> int:
        return sum(len(p) for p in self._providers.values())

    def add(self, key: bytes, provider: PeerInfo, now: float) -> bool:
        entries = self._providers.get(key)
        if entries is None:
            if len(self._providers) >= self.max_keys:
                self.expire(now)
                if len(self._providers) >= self.max_keys:
                    return False
            entries = self._providers[key] = OrderedDict()
        if provider.peer_id not in entries and len(entries) >= self.max_per_key:
            entries.popitem(last=False)
        entries[provider.peer_id] = (provider, now + self.ttl)
        entries.move_to_end(provider.peer_id)
        return True

    def remove(self, key: bytes, provider: bytes) -> None:
        entries = self._providers.get(key)
        if entries is not None:
            entries.pop(provider, None)
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
