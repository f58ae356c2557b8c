"""Which signalling nodes a node behind NAT stays registered with, as a state machine without I/O.

Candidates are public nodes the node verified itself: the DHT servers of its own routing table
(each answered its requests; the table takes at most a few per network), given to `offer`. Its
bootstraps are a fallback, used only while fewer than `want` others are known. Nothing a
stranger claims (a provider record, say) makes a candidate.

Choosing, so that registrations spread over the public nodes and strangers cannot take them:
- the pool is the `pool` candidates closest to the node's own ID (XOR of key positions), not in
  backoff, among those it has known for `settle` seconds (all, while fewer than `want` are);
  bootstraps are added only when fewer than `want` others are in it;
- the node asks the pool's members how many registrations they hold (`AskLoad`; answered with
  `loaded` or `load_failed`) and registers with the least loaded, the closer first among
  equals, so that load does not pile up on the bootstraps or on whoever sits closest;
- a live registration is kept for as long as it lives: no newcomer displaces it, however close
  or empty it says it is, so a burst of fresh identities cannot take over a node's signalling
  (they are not even in the pool until they have been around for `settle`). The exceptions are
  the node's own moves: a bootstrap is released (`Release`) once a non-bootstrap has taken its
  place, and every `rebalance_interval` a registration holding more than 1.5 times the pool's median
  load (+1) moves to a settled pool member at or under it (registered first, then released).

A candidate, as the machine sees it:

    idle --(in the pool, load unknown: AskLoad)--> asking --loaded--> idle (load known for load_ttl)
      |                                                   '--load_failed--> backoff
      '--(chosen: RegisterWith)--> pending --succeeded--> live --lost--> backoff
                                      '--lost--> backoff                   (a bootstrap: Release)
    backoff --(its time, doubling per failure up to retry_max)--> idle

Every change of the live set is reported (`Changed`), since the node's published record lists
them; `NeedCandidates` (at most once per `lookup_interval`) asks for a fresh view of the table
while a slot is open or a bootstrap is still used.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from overlay.core.peer import PeerInfo
from overlay.kademlia.routing import key_position


@dataclass(frozen=True)
class AskLoad:
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True)
class RegisterWith:
    peer: PeerInfo


@dataclass(frozen=True)
class Release:
    """End the registration with `peer` (a bootstrap another node has replaced)."""

    peer: PeerInfo


@dataclass(frozen=True)
class Changed:
    live: tuple[PeerInfo, ...]


@dataclass(frozen=True)
class NeedCandidates:
    pass


RegistrationAction = Union[AskLoad, RegisterWith, Release, Changed, NeedCandidates]


@dataclass
class _Backoff:
    until: float
    delay: float


class Registrations:
    def __init__(
        self,
        local_id: bytes,
        want: int = 3,
        pool: int | None = None,
        retry: float = 5.0,
        retry_max: float = 300.0,
        lookup_interval: float = 60.0,
        load_ttl: float = 30.0,
        settle: float = 600.0,
        rebalance_interval: float = 300.0,
        max_candidates: int = 64,
    ) -> None:
        self.position = key_position(local_id)
        self.want = want
        self.pool = pool if pool is not None else 2 * want
        self.retry = retry
        self.retry_max = retry_max
        self.lookup_interval = lookup_interval
        self.load_ttl = load_ttl
        self.settle = settle
        self.rebalance_interval = rebalance_interval
        self.max_candidates = max_candidates
        self._candidates: dict[bytes, PeerInfo] = {}
        self._bootstraps: dict[bytes, PeerInfo] = {}
        self._pending: dict[bytes, PeerInfo] = {}
        self._live: dict[bytes, PeerInfo] = {}
        self._asking: set[bytes] = set()
        self._loads: dict[bytes, tuple[int, float]] = {}  # peer -> (registrations it holds, when told)
        self._backoff: dict[bytes, _Backoff] = {}
        self._last_lookup: float | None = None
        self._first_seen: dict[bytes, float] = {}  # candidate -> when first offered
        self._moving: set[bytes] = set()  # live registrations to move off (too loaded)
        self._next_rebalance = -math.inf
        self._now = -math.inf  # the latest input's time: the timer only ever points past it

    @property
    def live(self) -> tuple[PeerInfo, ...]:
        return tuple(self._live.values())

    @property
    def pending(self) -> tuple[PeerInfo, ...]:
        return tuple(self._pending.values())

    # ---- inputs ------------------------------------------------------------------------------

    def offer(self, candidates: Sequence[PeerInfo], now: float, bootstraps: Sequence[PeerInfo] = ()) -> list[RegistrationAction]:
        """Verified public nodes (addresses of a known one are updated), and the bootstraps."""
        for peer in bootstraps:
            self._bootstraps[peer.peer_id] = peer
        for peer in candidates:
            if peer.peer_id not in self._bootstraps:
                self._candidates[peer.peer_id] = peer
                self._first_seen.setdefault(peer.peer_id, now)
        if len(self._candidates) > self.max_candidates:  # keep the closest, and those in use
            keep = sorted(self._candidates, key=self._distance)[: self.max_candidates]
            self._candidates = {p: i for p, i in self._candidates.items() if p in keep or self._used(p)}
            known = lambda p: p in self._candidates or p in self._bootstraps  # noqa: E731
            self._first_seen = {p: t for p, t in self._first_seen.items() if known(p)}
            self._loads = {p: v for p, v in self._loads.items() if known(p)}
            self._backoff = {p: b for p, b in self._backoff.items() if known(p)}
        return self._fill(now)

    def loaded(self, peer_id: bytes, registrations: int, now: float) -> list[RegistrationAction]:
        """A candidate said how many registrations it holds (a claim: it only orders the pool)."""
        self._asking.discard(peer_id)
        self._loads[peer_id] = (registrations, now)
        return self._fill(now)

    def load_failed(self, peer_id: bytes, now: float) -> list[RegistrationAction]:
        if peer_id not in self._asking:
            return []
        self._asking.discard(peer_id)
        self._back_off(peer_id, now)
        return self._fill(now)

    def succeeded(self, peer_id: bytes, now: float) -> list[RegistrationAction]:
        peer = self._pending.pop(peer_id, None)
        if peer is None:
            return []
        self._live[peer_id] = peer
        self._backoff.pop(peer_id, None)
        actions: list[RegistrationAction] = []
        if len(self._live) > self.want and peer_id not in self._bootstraps:
            leaving = [p for p in self._live if p in self._bootstraps] or [p for p in self._live if p in self._moving]
            if leaving:
                self._moving.discard(leaving[0])
                actions.append(Release(self._live.pop(leaving[0])))
        return [*actions, Changed(self.live), *self._fill(now)]

    def lost(self, peer_id: bytes, now: float) -> list[RegistrationAction]:
        """Registering failed, or a live registration ended (a Release of ours included)."""
        was_live = self._live.pop(peer_id, None) is not None
        if not was_live and self._pending.pop(peer_id, None) is None:
            return []
        self._back_off(peer_id, now)
        return ([Changed(self.live)] if was_live else []) + self._fill(now)

    def handle_timer(self, now: float) -> list[RegistrationAction]:
        return self._fill(now)

    def next_timer(self) -> float | None:
        """When a backoff ends or a lookup is due, while there is something to fill; else when
        the next rebalance is due."""
        if not self._wanting():  # full: only the next rebalance
            return self._next_rebalance if self._next_rebalance > self._now else None
        times = [b.until for p, b in self._backoff.items() if not self._used(p)]
        if self._last_lookup is not None:
            times.append(self._last_lookup + self.lookup_interval)
        return min((t for t in times if t > self._now), default=None)

    # ---- rules -------------------------------------------------------------------------------

    def _fill(self, now: float) -> list[RegistrationAction]:
        self._now = max(self._now, now)
        actions: list[RegistrationAction] = []
        pool = self._pool(now)
        idle = [p for p in pool if not self._used(p)]
        if now >= self._next_rebalance and len(self._live) == self.want and not self._pending:
            actions += self._rebalance(pool, idle, now)
        others = [p for p in idle if p not in self._bootstraps]
        leaving = [p for p in self._live if p in self._bootstraps or p in self._moving] if others else []
        slots = self.want - len(self._live) - len(self._pending) + min(len(leaving), len(others))
        if slots > 0 and idle:
            unknown = [p for p in idle if p not in self._asking and not self._fresh(p, now)]
            if unknown:
                self._asking.update(unknown)
                actions.append(AskLoad(tuple(self._info(p) for p in unknown)))
            elif not self._asking.intersection(idle):
                for peer_id in sorted(idle, key=lambda p: (self._loads[p][0], self._distance(p)))[:slots]:
                    self._pending[peer_id] = self._info(peer_id)
                    actions.append(RegisterWith(self._pending[peer_id]))
        if self._wanting() and (self._last_lookup is None or now - self._last_lookup >= self.lookup_interval):
            self._last_lookup = now
            actions.append(NeedCandidates())
        return actions

    def _rebalance(self, pool: list[bytes], idle: list[bytes], now: float) -> list[RegistrationAction]:
        """Every `rebalance_interval`, with the loads of the pool and of our registrations fresh:
        a registration holding more than 1.5 times the median (+1) is to be moved (`_moving`) to a
        pool member at or under it. The early public nodes of a network would otherwise keep
        what they took while they were few."""
        members = [*pool, *(p for p in self._live if p not in pool)]
        stale = [p for p in members if not self._fresh(p, now) and p not in self._asking]
        if stale:
            self._asking.update(stale)
            return [AskLoad(tuple(self._info(p) for p in stale))]
        if self._asking.intersection(members):
            return []
        self._next_rebalance = now + self.rebalance_interval
        median = statistics.median_low(self._loads[p][0] for p in members)
        light = [p for p in idle if p not in self._bootstraps and self._loads[p][0] <= median]
        heavy = sorted((p for p in self._live if self._loads[p][0] > 1.5 * median + 1), key=lambda p: -self._loads[p][0])
        self._moving = set(heavy[: len(light)])
        return []

    def _pool(self, now: float) -> list[bytes]:
        """The closest settled candidates not in backoff (all of them while fewer than `want` are
        settled), with bootstraps while others are too few."""
        ready = lambda ids: [p for p in ids if self._used(p) or not self._backing_off(p, now)]  # noqa: E731
        close = sorted(ready(self._candidates), key=self._distance)
        settled = [p for p in close if self._used(p) or now - self._first_seen[p] >= self.settle]
        pool = (settled if len(settled) >= self.want else close)[: self.pool]
        if len(pool) < self.want:
            pool += sorted(ready(self._bootstraps), key=self._distance)
        return pool

    def _wanting(self) -> bool:
        """A slot is open, or a bootstrap still holds one."""
        return len(self._live) + len(self._pending) < self.want or any(p in self._bootstraps for p in self._live)

    def _back_off(self, peer_id: bytes, now: float) -> None:
        previous = self._backoff.get(peer_id)
        delay = min(previous.delay * 2, self.retry_max) if previous else self.retry
        self._backoff[peer_id] = _Backoff(now + delay, delay)

    def _backing_off(self, peer_id: bytes, now: float) -> bool:
        backoff = self._backoff.get(peer_id)
        return backoff is not None and backoff.until > now

    def _fresh(self, peer_id: bytes, now: float) -> bool:
        load = self._loads.get(peer_id)
        return load is not None and now - load[1] < self.load_ttl

    def _used(self, peer_id: bytes) -> bool:
        return peer_id in self._live or peer_id in self._pending

    def _distance(self, peer_id: bytes) -> int:
        return key_position(peer_id) ^ self.position

    def _info(self, peer_id: bytes) -> PeerInfo:
        return self._candidates.get(peer_id) or self._bootstraps[peer_id]

