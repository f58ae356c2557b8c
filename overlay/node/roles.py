"""The node's decisions that do not need the network, shared by the node and the simulator:
what a node publishes in its peer record, which of the records a lookup found it believes, and
how it joins through its bootstrap peers (`Joiner`). No I/O: multiaddrs, records and events
with an explicit `now` in; multiaddrs, records and actions out."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, Union

import multiaddr

from nat.plan import circuit_addr
from overlay.core.addrs import dialable, strip_p2p
from overlay.core.errors import ProtocolError, RecordError
from overlay.core.peer import PeerInfo
from overlay.core.records import MAX_RECORD_ADDRS, PeerRecord, open_peer_record


def record_addrs(public: bool, own: Iterable[multiaddr.Multiaddr], relays: Iterable[PeerInfo]) -> tuple[bytes, ...]:
    """What a peer record carries: a public node's own addresses (mapped and listen); a node
    behind NAT one circuit address per signalling node it is registered with, through that
    node's first dialable address. At most MAX_RECORD_ADDRS (a host with many interfaces,
    container bridges or several IPv6 prefixes can have more)."""
    if public:
        addrs = list(own)
    else:
        addrs = []
        for relay in relays:
            direct = [a for a in map(multiaddr.Multiaddr, relay.addrs) if dialable(a)]
            addrs += [circuit_addr(strip_p2p(a), relay.peer_id) for a in direct[:1]]
    return tuple(a.to_bytes() for a in addrs)[:MAX_RECORD_ADDRS]


def best_record(values: Iterable[bytes], peer_id: bytes) -> PeerRecord | None:
    """The newest valid record of `peer_id` among a lookup's values (each a signed envelope from
    some peer): forged, malformed and other peers' records are skipped; the highest seq wins."""
    best: PeerRecord | None = None
    for value in values:
        try:
            record = open_peer_record(value)
        except RecordError:
            continue
        if record.peer_id == peer_id and (best is None or record.seq > best.seq):
            best = record
    return best


# ---- joining through the bootstrap peers ---------------------------------------------------------
#
# The join runs in rounds for the node's lifetime. A round tries at once every bootstrap that is
# not in the routing table and whose retry is due (the driver dials it and pings it over the
# DHT, then waits up to `answer_wait` for it to enter the table: only a bootstrap that answers
# our DHT counts, so a node of another network does not). Once every try of the round is back,
# a lookup of our own ID and a republish follow if more bootstraps are in the table than when
# the round began (the first such lookup is the join; a later one re-joins after a bootstrap
# dropped out and came back). A bootstrap that failed is retried after BOOTSTRAP_BACKOFF[0]
# seconds, doubling up to BOOTSTRAP_BACKOFF[1]; one that answered starts from the first delay
# again. Between rounds the node sleeps until the next retry is due, at least MIN_SLEEP and at
# most BOOTSTRAP_CHECK (how often a joined node checks its bootstraps are still in the table).
# Peers remembered from an earlier run (overlay.node.peerstore) are tried as bootstraps too, so a
# node whose bootstraps are all down rejoins through them; one that failed FORGET_AFTER tries is
# dropped.
#
#     state     event                                          next state  actions
#     WAITING   wake, no bootstrap due                         WAITING     Wake
#     WAITING   wake                                           TRYING      TryBootstrap for each due
#     TRYING    answered / failed, more tries out              TRYING      -
#     TRYING    answered / failed, the last; more in the table JOINING     Join
#     TRYING    answered / failed, the last; not more          WAITING     Wake
#     JOINING   joined                                         WAITING     Wake
#
# Any other event (answered outside a round, or for a bootstrap not being tried, wake during
# a round, joined without a Join) raises ProtocolError: a bug in the driver.

BOOTSTRAP_BACKOFF = (1.0, 60.0)  # first retry, cap
FORGET_AFTER = 3  # failed tries after which a remembered peer (not a configured bootstrap) is dropped
BOOTSTRAP_CHECK = 30.0  # how often a joined node checks that its bootstraps are still there
MIN_SLEEP = 0.5


class JoinState(enum.Enum):
    WAITING = "waiting"
    TRYING = "trying"
    JOINING = "joining"


@dataclass(eq=False, kw_only=True)
class Bootstrap:
    """One bootstrap's retry bookkeeping; the driver subclasses it with how to reach the peer."""

    remembered: bool = False  # a peer known from an earlier run, tried as a bootstrap until it fails FORGET_AFTER times
    attempts: int = 0
    last_error: str = ""
    next_try: float = 0.0
    backoff: float = BOOTSTRAP_BACKOFF[0]


B = TypeVar("B", bound=Bootstrap)


@dataclass(frozen=True)
class TryBootstrap(Generic[B]):
    """Reach `bootstrap` and ping it over the DHT; report answered() once it is in the routing
    table, failed() if the dial fails or it is not there within `wait` seconds."""

    bootstrap: B
    wait: float


@dataclass(frozen=True)
class Join:
    """Look our own ID up (the DHT's bootstrap), republish our record, then report joined()."""


@dataclass(frozen=True)
class Wake:
    """Call wake() at `at`."""

    at: float


JoinAction = Union[TryBootstrap, Join, Wake]


class Joiner(Generic[B]):
    """The join rule of the node and the simulator (see the table above). `in_table(b)` tells
    whether bootstrap b is in the routing table now; `answer_wait` is how long a try waits for
    it (the DHT's request timeout)."""

    def __init__(self, bootstraps: Sequence[B], in_table: Callable[[B], bool], answer_wait: float) -> None:
        self.bootstraps = list(bootstraps)
        self.in_table = in_table
        self.answer_wait = answer_wait
        self.state = JoinState.WAITING
        self.joins = 0  # completed Joins: the first is the join, later ones re-joins
        self._trying: set[B] = set()
        self._before = 0  # bootstraps in the table when the round began

    def wake(self, now: float) -> list[JoinAction]:
        """Start a round: try every bootstrap that is out of the table and due."""
        self._expect(JoinState.WAITING, "wake")
        due = [b for b in self.bootstraps if not self.in_table(b) and b.next_try <= now]
        if not due:
            return [self._sleep(now)]
        self.state = JoinState.TRYING
        self._before = self._reached()
        self._trying = set(due)
        for b in due:
            b.attempts += 1
        return [TryBootstrap(b, self.answer_wait) for b in due]

    def answered(self, bootstrap: B, now: float) -> list[JoinAction]:
        """The bootstrap answered our DHT ping and is in the routing table."""
        self._back(bootstrap, "answered")
        bootstrap.last_error, bootstrap.backoff = "", BOOTSTRAP_BACKOFF[0]
        return self._round_end(now)

    def failed(self, bootstrap: B, error: str, now: float) -> list[JoinAction]:
        """The dial failed, or the bootstrap was not in the table within `answer_wait`."""
        self._back(bootstrap, "failed")
        bootstrap.last_error = error
        bootstrap.next_try = now + bootstrap.backoff
        bootstrap.backoff = min(bootstrap.backoff * 2, BOOTSTRAP_BACKOFF[1])
        if bootstrap.remembered and bootstrap.attempts >= FORGET_AFTER:
            self.bootstraps.remove(bootstrap)
        return self._round_end(now)

    def joined(self, now: float) -> list[JoinAction]:
        """The lookup and the republish that Join asked for are done."""
        self._expect(JoinState.JOINING, "joined")
        self.joins += 1
        self.state = JoinState.WAITING
        return [self._sleep(now)]

    # ---- internals ---------------------------------------------------------------------------

    def _expect(self, state: JoinState, event: str) -> None:
        if self.state is not state:
            raise ProtocolError(f"join: {event} while {self.state.value}")

    def _back(self, bootstrap: B, event: str) -> None:
        self._expect(JoinState.TRYING, event)
        if bootstrap not in self._trying:
            raise ProtocolError(f"join: {event} for a bootstrap that is not being tried")
        self._trying.discard(bootstrap)

    def _round_end(self, now: float) -> list[JoinAction]:
        if self._trying:
            return []
        if self._reached() > self._before:
            self.state = JoinState.JOINING
            return [Join()]
        self.state = JoinState.WAITING
        return [self._sleep(now)]

    def _reached(self) -> int:
        return sum(1 for b in self.bootstraps if self.in_table(b))

    def _sleep(self, now: float) -> Wake:
        due = min((b.next_try for b in self.bootstraps if not self.in_table(b)), default=now + BOOTSTRAP_CHECK)
        return Wake(now + min(max(due - now, MIN_SLEEP), BOOTSTRAP_CHECK))
