"""Connection liveness, the core: when to ping each connection, what to do when a ping fails.

Why: when a home router reboots or its WAN address changes, it forgets its flows. A TCP
connection through it then retries for minutes, the swarm still lists it, and the dialer finds
the peer "connected" and dials nothing; py-libp2p's Yamux sends keepalive pings but never acts on
a missing answer. So every `interval` each connection is pinged on itself (the connection, not
the peer: a live relayed connection can sit beside a dead direct one), and one whose ping fails
or goes unanswered is closed. A peer we had dialed ourselves, left with no connection, is dialed
again (by peer ID: a fresh lookup finds what it republished after the change), within a redial
budget so that a network change under hundreds of connections is not a dial storm; refused
redials are counted. The trio adapter is overlay.transport.liveness.

A connection that carries traffic is pinged all the same: one stream every `interval` (15 s by
default) is cheap, and knowing that data arrived would mean hooking every stream's reads.

Per connection (no I/O here; times are passed in):

    WAITING  --tick, now >= due-->   PINGING   (action Ping)
    PINGING  --answered-->           WAITING   (due = now + interval)
    PINGING  --failed-->             gone      (Close; Redial(peer) when we dialed it, the peer has
                                                no other connection and the budget allows; the
                                                adapter tries after each of REDIAL_DELAYS)
    any      --absent from a tick--> gone      (it closed by itself)

A connection first seen is WAITING, due one interval later: it has just proved itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # a connection
P = TypeVar("P", bound=Hashable)  # a peer

INTERVAL = 15.0
REDIAL_BURST = 8  # redials allowed per REDIAL_WINDOW
REDIAL_WINDOW = 60.0
REDIAL_DELAYS = (0.0, 10.0, 30.0)  # a redial's tries: the peer may republish its new addresses only later


@dataclass(frozen=True)
class Ping(Generic[K]):
    conn: K


@dataclass(frozen=True)
class Close(Generic[K]):
    conn: K
    why: str


@dataclass(frozen=True)
class Redial(Generic[P]):
    peer: P


@dataclass
class LivenessStats:
    pings: int = 0
    answered: int = 0
    closed: int = 0  # connections closed because their ping failed
    redials: int = 0
    redials_refused: int = 0  # over the budget
    redials_failed: int = 0  # every try failed


@dataclass
class _Conn(Generic[P]):
    peer: P
    ours: bool  # we dialed it
    due: float
    pinging: bool = False


@dataclass
class Liveness(Generic[K, P]):
    interval: float = INTERVAL
    redial_burst: int = REDIAL_BURST
    redial_window: float = REDIAL_WINDOW
    stats: LivenessStats = field(default_factory=LivenessStats)
    _conns: dict[K, _Conn[P]] = field(default_factory=dict)
    _redials: deque[float] = field(default_factory=deque)

    def tick(self, now: float, conns: Mapping[K, tuple[P, bool]]) -> list[Ping[K]]:
        """`conns`: every open connection, with its peer and whether we dialed it."""
        for gone in self._conns.keys() - conns.keys():
            del self._conns[gone]
        pings: list[Ping[K]] = []
        for conn, (peer, ours) in conns.items():
            state = self._conns.setdefault(conn, _Conn(peer, ours, now + self.interval))
            if not state.pinging and now >= state.due:
                state.pinging = True
                self.stats.pings += 1
                pings.append(Ping(conn))
        return pings

    def answered(self, conn: K, now: float) -> None:
        if (state := self._conns.get(conn)) is not None:
            self.stats.answered += 1
            state.pinging, state.due = False, now + self.interval

    def failed(self, conn: K, now: float, why: str) -> list[Close[K] | Redial[P]]:
        state = self._conns.pop(conn, None)
        if state is None:  # closed meanwhile: nothing to do
            return []
        self.stats.closed += 1
        actions: list[Close[K] | Redial[P]] = [Close(conn, why)]
        if state.ours and not any(other.peer == state.peer for other in self._conns.values()):
            while self._redials and self._redials[0] <= now - self.redial_window:
                self._redials.popleft()
            if len(self._redials) < self.redial_burst:
                self._redials.append(now)
                self.stats.redials += 1
                actions.append(Redial(state.peer))
            else:
                self.stats.redials_refused += 1
        return actions
