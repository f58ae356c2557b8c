"""One iterative Kademlia lookup (FIND_NODE, GET_VALUE or GET_PROVIDERS) as a state machine.

It keeps every peer it has heard of, ordered by distance to the target, and asks the closest
ones it has not asked yet, at most `alpha` at a time. It ends when the `k` closest peers that
have not failed have all answered, when nothing is left to ask, or early when a value or
provider quorum is reached. No I/O: the owner sends the requests it returns and reports each
answer or failure back.
"""

from __future__ import annotations

import bisect
import enum
import operator
from dataclasses import dataclass, field

from overlay.core.peer import PeerInfo
from overlay.kademlia.routing import key_position


class _State(enum.Enum):
    PENDING = 0
    WAITING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass
class _Candidate:
    info: PeerInfo
    distance: int
    hop: int
    state: _State = _State.PENDING


@dataclass
class LookupResult:
    key: bytes
    closest: list[PeerInfo]
    values: list[tuple[bytes, bytes]] = field(default_factory=list)  # (from peer, value)
    providers: list[PeerInfo] = field(default_factory=list)
    hops: int = 0
    requests: int = 0
    failures: int = 0


class Lookup:
    def __init__(
        self,
        key: bytes,
        local_id: bytes,
        seeds: list[PeerInfo],
        k: int,
        alpha: int,
        quorum: int = 0,
    ) -> None:
        """`quorum` > 0 ends the lookup once that many values (or providers) were collected."""
        self.key = key
        self.target = key_position(key)
        self.local_id = local_id
        self.k = k
        self.alpha = alpha
        self.quorum = quorum
        self._candidates: dict[bytes, _Candidate] = {}
        self._by_distance: list[_Candidate] = []  # kept sorted as peers arrive: no sort per step
        self.waiting = 0  # requests in flight
        self.result = LookupResult(key, [])
        self._value_hop = 0
        self._provider_ids: set[bytes] = set()
        for seed in seeds:
            self._add(seed, hop=1)

    def _add(self, info: PeerInfo, hop: int) -> None:
        if info.peer_id == self.local_id or info.peer_id in self._candidates:
            return
        candidate = _Candidate(info, key_position(info.peer_id) ^ self.target, hop)
        self._candidates[info.peer_id] = candidate
        bisect.insort(self._by_distance, candidate, key=operator.attrgetter("distance"))

    def _ranked(self) -> list[_Candidate]:
        """The k closest candidates that have not failed."""
        ranked = []
        for c in self._by_distance:
            if c.state is not _State.FAILED:
                ranked.append(c)
                if len(ranked) == self.k:
                    break
        return ranked

    def quorum_reached(self) -> bool:
        if self.quorum <= 0:
            return False
        return len(self.result.values) >= self.quorum or len(self.result.providers) >= self.quorum

    def done(self) -> bool:
        if self.quorum_reached():
            return True
        ranked = self._ranked()
        return all(c.state is _State.SUCCEEDED for c in ranked)

    def next_peers(self) -> list[PeerInfo]:
        """Peers to ask now (marked as waiting); empty when the lookup is done or saturated."""
        if self.done():
            return []
        budget = self.alpha - self.waiting
        chosen = []
        for c in self._ranked():
            if budget <= 0:
                break
            if c.state is _State.PENDING:
                c.state = _State.WAITING
                self.waiting += 1
                chosen.append(c.info)
                budget -= 1
        self.result.requests += len(chosen)
        return chosen

    def on_response(
        self,
        peer_id: bytes,
        closer: tuple[PeerInfo, ...],
        value: bytes | None = None,
        providers: tuple[PeerInfo, ...] = (),
    ) -> None:
        c = self._candidates.get(peer_id)
        if c is None or c.state is not _State.WAITING:
            return
        c.state = _State.SUCCEEDED
        self.waiting -= 1
        for info in closer:
            self._add(info, c.hop + 1)
        if value is not None:
            self.result.values.append((peer_id, value))
            self._value_hop = self._value_hop or c.hop
        if providers:
            self.add_providers(providers)
            self._value_hop = self._value_hop or c.hop

    def add_providers(self, providers: list[PeerInfo] | tuple[PeerInfo, ...]) -> None:
        for p in providers:
            if p.peer_id not in self._provider_ids:
                self._provider_ids.add(p.peer_id)
                self.result.providers.append(p)

    def on_failure(self, peer_id: bytes) -> None:
        c = self._candidates.get(peer_id)
        if c is not None and c.state is _State.WAITING:
            c.state = _State.FAILED
            self.waiting -= 1
            self.result.failures += 1

    def finish(self) -> LookupResult:
        """The result so far: the closest peers that answered, and how many hops it took."""
        answered = [c for c in self._ranked() if c.state is _State.SUCCEEDED]
        self.result.closest = [c.info for c in answered]
        if self._value_hop:
            self.result.hops = self._value_hop
        elif answered:
            self.result.hops = answered[0].hop
        return self.result
