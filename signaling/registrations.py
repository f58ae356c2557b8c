"""Which signalling nodes a node behind NAT stays registered with, as a state machine without I/O.

Candidates come from the node's bootstraps and from DHT provider records under the signalling
key, in the order offered (bootstraps first). The machine keeps `want` registrations: it asks for
one (`RegisterWith`) whenever fewer are live or pending, replaces a lost one with the next candidate,
backs off from a candidate that failed (doubling per failure), asks for more candidates
(`NeedCandidates`, at most once per `lookup_interval`) when it runs out, and reports every change
of the live set (`Changed`), since the node's published record lists them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from overlay.core.peer import PeerInfo


SIGNALING_KEY = hashlib.sha256(b"/overlay/signaling").digest()  # DHT providers: the signalling nodes


@dataclass(frozen=True)
class RegisterWith:
    peer: PeerInfo


@dataclass(frozen=True)
class Changed:
    live: tuple[PeerInfo, ...]


@dataclass(frozen=True)
class NeedCandidates:
    pass


RegistrationAction = Union[RegisterWith, Changed, NeedCandidates]


@dataclass
class _Backoff:
    until: float
    delay: float


class Registrations:
    def __init__(
        self,
        want: int = 3,
        retry: float = 5.0,
        retry_max: float = 300.0,
        lookup_interval: float = 60.0,
        max_candidates: int = 64,
    ) -> None:
        self.want = want
        self.retry = retry
        self.retry_max = retry_max
        self.lookup_interval = lookup_interval
        self.max_candidates = max_candidates
        self._candidates: OrderedDict[bytes, PeerInfo] = OrderedDict()
        self._pending: dict[bytes, PeerInfo] = {}
        self._live: dict[bytes, PeerInfo] = {}
        self._backoff: dict[bytes, _Backoff] = {}
        self._last_lookup: float | None = None

    @property
    def live(self) -> tuple[PeerInfo, ...]:
        return tuple(self._live.values())

    @property
    def pending(self) -> tuple[PeerInfo, ...]:
        return tuple(self._pending.values())

    def offer(self, candidates: Sequence[PeerInfo], now: float) -> list[RegistrationAction]:
        """New or refreshed candidates (addresses of a known one are updated)."""
        for peer in candidates:
            self._candidates[peer.peer_id] = peer
        while len(self._candidates) > self.max_candidates:
            oldest = next(p for p in self._candidates if p not in self._live and p not in self._pending)
            del self._candidates[oldest]
        return self._fill(now)

    def succeeded(self, peer_id: bytes, now: float) -> list[RegistrationAction]:
        peer = self._pending.pop(peer_id, None)
        if peer is None:
            return []
        self._live[peer_id] = peer
        self._backoff.pop(peer_id, None)
        return [Changed(self.live)]

    def lost(self, peer_id: bytes, now: float) -> list[RegistrationAction]:
        """Registering failed, or a live registration ended."""
        was_live = self._live.pop(peer_id, None) is not None
        if not was_live and self._pending.pop(peer_id, None) is None:
            return []
        previous = self._backoff.get(peer_id)
        delay = min(previous.delay * 2, self.retry_max) if previous else self.retry
        self._backoff[peer_id] = _Backoff(now + delay, delay)
        return ([Changed(self.live)] if was_live else []) + self._fill(now)

    def handle_timer(self, now: float) -> list[RegistrationAction]:
        return self._fill(now)

    def next_timer(self) -> float | None:
        if len(self._live) + len(self._pending) >= self.want:
            return None
        idle = (p for p in self._candidates if p not in self._live and p not in self._pending)
        return min((self._backoff[p].until for p in idle if p in self._backoff), default=None)

    def _fill(self, now: float) -> list[RegistrationAction]:
        actions: list[RegistrationAction] = []
        for peer_id, peer in self._candidates.items():
            if len(self._live) + len(self._pending) >= self.want:
                return actions
            backoff = self._backoff.get(peer_id)
            if peer_id in self._live or peer_id in self._pending or (backoff and backoff.until > now):
                continue
            self._pending[peer_id] = peer
            actions.append(RegisterWith(peer))
        if self._last_lookup is None or now - self._last_lookup >= self.lookup_interval:
            self._last_lookup = now
            actions.append(NeedCandidates())
        return actions
