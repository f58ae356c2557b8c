"""Refusing replays of signed messages with bounded memory: a core without I/O.

A signed message names its signer, a timestamp and a random nonce. A receiver accepts it only
when the timestamp is within `window` seconds of its own clock and the (signer, nonce) pair was not
seen before; a replay inside the window is refused, one outside it is refused as stale. So the
pairs need be kept only while their timestamps can still be accepted.

Pairs are kept in buckets of `window` seconds by timestamp; a bucket is dropped once every
timestamp in it is older than the window. Memory is bounded by `max_entries` in all and
`max_per_signer` for one signer (so one identity cannot take the whole cache); a message that
would pass either is refused and the caller counts it. Refusing, not evicting: an evicted pair
could be replayed.

States: a bucket is live from its first entry until `now - window` passes its end, then dropped.
Events: `check(signer, nonce, timestamp, now)` -> None (accepted and remembered) or the reason.
"""

from __future__ import annotations

import math

STALE, FUTURE, REPLAY, FULL, SIGNER_FULL = "stale", "from the future", "replay", "replay cache full", "signer over quota"


class ReplayWindow:
    def __init__(self, window: float, max_entries: int, max_per_signer: int) -> None:
        self.window = window
        self.max_entries = max_entries
        self.max_per_signer = max_per_signer
        self._buckets: dict[int, dict[bytes, set[bytes]]] = {}
        self._per_signer: dict[bytes, int] = {}
        self.entries = 0

    def check(self, signer: bytes, nonce: bytes, timestamp: float, now: float) -> str | None:
        """Accept (None) and remember the pair, or say why not."""
        if timestamp < now - self.window:
            return STALE
        if timestamp > now + self.window:
            return FUTURE
        self._expire(now)
        bucket = self._buckets.get(math.floor(timestamp / self.window), {})
        if nonce in bucket.get(signer, ()):
            return REPLAY
        if self.entries >= self.max_entries:
            return FULL
        if self._per_signer.get(signer, 0) >= self.max_per_signer:
            return SIGNER_FULL
        self._buckets.setdefault(math.floor(timestamp / self.window), bucket).setdefault(signer, set()).add(nonce)
        self._per_signer[signer] = self._per_signer.get(signer, 0) + 1
        self.entries += 1
        return None

    def _expire(self, now: float) -> None:
        oldest_live = math.floor((now - self.window) / self.window)
        for index in [i for i in self._buckets if i < oldest_live]:
            for signer, nonces in self._buckets.pop(index).items():
                self.entries -= len(nonces)
                self._per_signer[signer] -= len(nonces)
                if not self._per_signer[signer]:
                    del self._per_signer[signer]
