"""How to reach a peer from its record: the dial strategy, as a state machine without I/O.

Direct addresses first. A peer reachable only through signalling nodes is connected through one
of their relays at once (after `relay_delay` when direct addresses are also being tried), so the
caller gets a working connection quickly; then, in the background, the strategy asks for a
direct path (a WebRTC connection set up through that relay's signalling server) and, once it is
up, says the relayed connection may go. Where no direct path exists the relay stays: a few
upgrade attempts with growing pauses, then it gives up. The node runs this machine with trio;
the simulator runs it in virtual time.

States and what moves them (everything that changes the state is here):

    NEW      --start-->                       DIALING   (DialDirect, or DialRelay, or FAILED at once)
    DIALING  --direct ok-->                   DIRECT    (DialConnected("direct"))
    DIALING  --relay ok-->                    RELAYED   (DialConnected("relayed"), Upgrade)
    DIALING  --last direct/relay failed-->    FAILED    (Failed)
    RELAYED  --direct ok / upgrade ok-->      DIRECT    (Upgraded)
    RELAYED  --last upgrade failed-->         RELAYED, finished (GaveUp)

DIRECT, FAILED and a finished RELAYED are final. Results that arrive after the race they belonged
to is decided (a direct dial that completes once relayed or direct, a relay after a direct win)
are expected and answered as the table says; an event the machine could not have asked for (a
result before `start`, a relay or upgrade result it did not ask for) raises StrategyError.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from overlay.core.errors import ProtocolError


class DialState(Enum):
    NEW = "new"
    DIALING = "dialing"
    DIRECT = "direct"
    RELAYED = "relayed"
    FAILED = "failed"


class StrategyError(ProtocolError):
    """An event the strategy did not ask for: a bug in the adapter that drives it."""


@dataclass(frozen=True)
class Plan:
    direct: tuple[str, ...]  # addresses to dial directly
    relays: tuple[tuple[bytes, tuple[str, ...]], ...]  # (relay peer ID, relay's own addresses)


@dataclass(frozen=True)
class StrategyConfig:
    relay_delay: float = 0.25
    upgrade_attempts: int = 3
    upgrade_retry: float = 30.0  # doubles after each failed attempt


@dataclass(frozen=True)
class DialDirect:
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class DialRelay:
    relay: bytes
    addrs: tuple[str, ...]


@dataclass(frozen=True)
class Upgrade:
    relay: bytes  # the signalling node to set the direct path up through


@dataclass(frozen=True)
class DialConnected:
    path: str  # "direct" or "relayed": streams can be opened now


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Upgraded:
    """A direct path is up: the relayed connection may close once idle."""


@dataclass(frozen=True)
class GaveUp:
    """No direct path found: the relayed connection stays."""


DialAction = Union[DialDirect, DialRelay, Upgrade, DialConnected, Failed, Upgraded, GaveUp]


class DialStrategy:
    def __init__(self, plan: Plan, config: StrategyConfig = StrategyConfig()) -> None:
        self.plan = plan
        self.config = config
        self.state = DialState.NEW
        self.finished = False
        self._direct_pending = False
        self._relays_left = list(plan.relays)
        self._relay_pending: bytes | None = None
        self._relay_at: float | None = None
        self._via: bytes | None = None
        self._upgrades = 0
        self._upgrade_at: float | None = None
        self._upgrading = False

    def start(self, now: float) -> list[DialAction]:
        if self.state is not DialState.NEW:
            raise StrategyError(f"start in state {self.state.value}")
        self.state = DialState.DIALING
        actions: list[DialAction] = []
        if self.plan.direct:
            self._direct_pending = True
            actions.append(DialDirect(self.plan.direct))
            if self._relays_left:
                self._relay_at = now + self.config.relay_delay
        elif self._relays_left:
            actions += self._next_relay()
        else:
            actions += self._fail("the record has no usable address")
        return actions

    def direct_done(self, ok: bool, now: float) -> list[DialAction]:
        if not self._direct_pending:
            raise StrategyError("a direct dial result, but no direct dial was asked for")
        self._direct_pending = False
        if ok:
            if self.state is DialState.DIALING:
                return self._done([DialConnected("direct")], DialState.DIRECT)
            if self.state is DialState.RELAYED:
                return self._done([Upgraded()], DialState.DIRECT)
            return []
        if self.state is not DialState.DIALING:
            return []
        if self._relay_pending is None and self._relays_left:
            self._relay_at = None
            return self._next_relay()
        return [] if self._relay_pending is not None else self._fail("every direct address failed and no relay is known")

    def relay_done(self, relay: bytes, ok: bool, now: float) -> list[DialAction]:
        if relay != self._relay_pending:
            raise StrategyError("a relay result, but that relay dial was not asked for")
        self._relay_pending = None
        if self.state is DialState.DIRECT and ok:
            return [Upgraded()]  # the direct dial won the race: the relayed connection may go
        if self.state is not DialState.DIALING:
            return []
        if ok:
            self.state = DialState.RELAYED
            self._via = relay
            self._upgrading = True
            self._upgrades = 1
            return [DialConnected("relayed"), Upgrade(relay)]
        if self._relays_left:
            return self._next_relay()
        return [] if self._direct_pending else self._fail("every address and relay failed")

    def upgrade_done(self, ok: bool, now: float) -> list[DialAction]:
        if not self._upgrading:
            raise StrategyError("an upgrade result, but no upgrade was asked for")
        self._upgrading = False
        if self.state is not DialState.RELAYED:
            return []
        if ok:
            return self._done([Upgraded()], DialState.DIRECT)
        if self._upgrades >= self.config.upgrade_attempts:
            return self._done([GaveUp()], DialState.RELAYED)
        self._upgrade_at = now + self.config.upgrade_retry * 2 ** (self._upgrades - 1)
        return []

    def handle_timer(self, now: float) -> list[DialAction]:
        actions: list[DialAction] = []
        if self._relay_at is not None and now >= self._relay_at:
            self._relay_at = None
            if self.state is DialState.DIALING and self._relay_pending is None:
                actions += self._next_relay()
        if self._upgrade_at is not None and now >= self._upgrade_at:
            self._upgrade_at = None
            if self.state is DialState.RELAYED and not self._upgrading and self._via is not None:
                self._upgrading = True
                self._upgrades += 1
                actions.append(Upgrade(self._via))
        return actions

    def next_timer(self) -> float | None:
        return min((t for t in (self._relay_at, self._upgrade_at) if t is not None), default=None)

    def _next_relay(self) -> list[DialAction]:
        relay, addrs = self._relays_left.pop(0)
        self._relay_pending = relay
        return [DialRelay(relay, addrs)]

    def _fail(self, reason: str) -> list[DialAction]:
        self.state = DialState.FAILED
        self.finished = True
        return [Failed(reason)]

    def _done(self, actions: list[DialAction], state: DialState) -> list[DialAction]:
        self.state = state
        self.finished = True
        self._relay_at = self._upgrade_at = None
        return actions
