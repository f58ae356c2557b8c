"""The resource manager's core: which inbound connections and streams a node takes, without I/O.

Scopes, as in go-libp2p's resource manager: the system, one remote IP, its address group (/24 of
IPv4, /48 of IPv6: what one home or one hosting customer holds), one connection, and one
protocol of one peer. A stranger's connections are counted against its IP and group from the
moment they are accepted, while still unauthenticated; once Noise names the peer, a connection
counts as the peer's. Every refusal is counted by reason (`refused`).

Why our own rather than py-libp2p's `libp2p.rcmgr` (0.8.1): its limiters read the wall clock and
take thread locks, so the simulator could not run them in virtual time; its admission "fails
open" when anything in it raises; and it reconciles leaked ("phantom") slots against the swarm
on every accept. This core takes an explicit `now`, holds only counts, and is driven by the
host (overlay/transport/host.py) and by the simulator alike.

An inbound connection (a `Ticket`):

    accept(ip, now) ---------> PENDING       the handshake runs, at most `handshake_timeout`
        | refused: pending, pending-ip, accept-rate, ip, group
    established(ticket, known) -> OPEN       Noise named the peer; strangers may fill only
        | refused: inbound                   `inbound` of `connections`: the rest is kept for
                                             our own dials and peers we already know
    closed(ticket) -----------> gone         from either state; a second call does nothing

An inbound stream: open_stream(conn) when it arrives, open_protocol(peer, protocol) once its
protocol is negotiated, each held until its close_...; refused: streams, streams-connection,
streams-protocol.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

from overlay.core.addrs import address_group
from overlay.core.ratelimit import RateLimiter


@dataclass(frozen=True)
class ResourceLimits:
    """Sized for a home machine with 1,024 file descriptors (docs/security.md says why each)."""

    connections: int = 256  # all peer connections, in and out (the config's max_connections)
    per_ip: int = 8  # inbound connections, pending or open, from one IP
    per_group: int = 32  # ... from one /24 or /48
    pending: int = 64  # inbound handshakes in progress, in all
    pending_per_ip: int = 4  # ... from one IP
    handshake_timeout: float = 5.0  # seconds from accept until Noise and Yamux are up
    accept_rate: tuple[float, float] = (4.0, 16.0)  # new inbound connections a second per IP, burst
    streams: int = 4096  # inbound streams open at once, in all
    streams_per_connection: int = 64
    streams_per_protocol: int = 16  # inbound streams of one protocol from one peer, unless the protocol says
    exempt: tuple[str, ...] = ("127.0.0.1/32", "::1/128")  # networks free of the per-IP and per-group limits

    @property
    def inbound(self) -> int:
        """Open inbound connections from peers we do not know: a quarter of `connections` stays
        free for our own dials and for known peers, so a flood cannot cut the node off."""
        return self.connections - self.connections // 4


class LimitExceeded(Exception):
    """A limit refused a connection or a stream; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{detail} ({reason})")
        self.reason = reason


@dataclass(eq=False)
class Ticket:
    """One inbound connection's claim on the limits."""

    ip: str  # "" when there is no socket (a relayed connection)
    group: str
    exempt: bool
    open: bool = False
    closed: bool = False


@dataclass
class _Connection:
    streams: int = 0


class ResourceManager:
    def __init__(self, limits: ResourceLimits | None = None) -> None:
        self.limits = limits = limits or ResourceLimits()
        self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in limits.exempt)
        self._accepts = RateLimiter(*limits.accept_rate)
        self.pending = 0
        self.inbound = 0  # open inbound connections
        self.streams = 0
        self.refused: Counter[str] = Counter()
        self._per_ip: Counter[str] = Counter()
        self._pending_ip: Counter[str] = Counter()
        self._per_group: Counter[str] = Counter()
        self._conns: dict[Hashable, _Connection] = {}
        self._protocol: Counter[tuple[Hashable, str]] = Counter()

    # ---- connections ---------------------------------------------------------------------------

    def accept(self, ip: str, now: float) -> Ticket:
        """A connection accepted from `ip` (before any handshake). Raises LimitExceeded."""
        limits = self.limits
        ticket = Ticket(ip, address_group(ip) if ip else "", self.is_exempt(ip))
        if self.pending >= limits.pending:
            self._refuse("pending", f"{self.pending} handshakes in progress")
        if self.inbound >= limits.connections:
            self._refuse("inbound", f"{self.inbound} inbound connections open")
        if ip and not ticket.exempt:
            if self._pending_ip[ip] >= limits.pending_per_ip:
                self._refuse("pending-ip", f"{self._pending_ip[ip]} handshakes in progress from {ip}")
            if self._per_ip[ip] >= limits.per_ip:
                self._refuse("ip", f"{self._per_ip[ip]} connections from {ip}")
            if ticket.group and self._per_group[ticket.group] >= limits.per_group:
                self._refuse("group", f"{self._per_group[ticket.group]} connections from {ticket.group}")
            if not self._accepts.allow(ip, now):
                self._refuse("accept-rate", f"more than {limits.accept_rate[0]:g} new connections a second from {ip}")
        self.pending += 1
        if ip and not ticket.exempt:
            self._pending_ip[ip] += 1
            self._per_ip[ip] += 1
            if ticket.group:
                self._per_group[ticket.group] += 1
        return ticket

    def established(self, ticket: Ticket, known: bool) -> None:
        """Noise has authenticated the peer; `known`: one we already hold (routing table, our
        signalling nodes), which may use the reserve. Raises LimitExceeded (the caller closes
        the connection and then calls `closed`)."""
        if ticket.open or ticket.closed:
            return
        limit = self.limits.connections if known else self.limits.inbound
        if self.inbound >= limit:
            self._refuse("inbound", f"{self.inbound} inbound connections open, the rest is kept for known peers")
        self._end_pending(ticket)
        ticket.open = True
        self.inbound += 1

    def closed(self, ticket: Ticket) -> None:
        if ticket.closed:
            return
        if ticket.open:
            self.inbound -= 1
        else:
            self._end_pending(ticket)
        ticket.closed = True
        if ticket.ip and not ticket.exempt:
            _decrement(self._per_ip, ticket.ip)
            if ticket.group:
                _decrement(self._per_group, ticket.group)

    def is_exempt(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def _end_pending(self, ticket: Ticket) -> None:
        self.pending -= 1
        if ticket.ip and not ticket.exempt:
            _decrement(self._pending_ip, ticket.ip)

    # ---- streams -------------------------------------------------------------------------------

    def open_stream(self, conn: Hashable) -> None:
        """An inbound stream on connection `conn`, before its protocol is negotiated (a stream
        that never names one holds its place until the negotiation times out). Raises LimitExceeded."""
        state = self._conns.get(conn)
        if self.streams >= self.limits.streams:
            self._refuse("streams", f"{self.streams} inbound streams open")
        if state is not None and state.streams >= self.limits.streams_per_connection:
            self._refuse("streams-connection", f"{state.streams} streams open on one connection")
        if state is None:
            state = self._conns[conn] = _Connection()
        state.streams += 1
        self.streams += 1

    def close_stream(self, conn: Hashable) -> None:
        state = self._conns.get(conn)
        if state is None:
            return
        state.streams -= 1
        if state.streams <= 0:
            del self._conns[conn]
        self.streams -= 1

    def open_protocol(self, peer: Hashable, protocol: str, limit: int | None = None) -> None:
        """The stream's protocol is known: at most `limit` (else `streams_per_protocol`) of
        them from one peer, over all its connections. Raises LimitExceeded."""
        cap = self.limits.streams_per_protocol if limit is None else limit
        if self._protocol[(peer, protocol)] >= cap:
            self._refuse("streams-protocol", f"{cap} streams of {protocol} open from one peer")
        self._protocol[(peer, protocol)] += 1

    def close_protocol(self, peer: Hashable, protocol: str) -> None:
        _decrement(self._protocol, (peer, protocol))

    def protocol_streams(self, peer: Hashable, protocol: str) -> int:
        return self._protocol[(peer, protocol)]

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] += 1
        raise LimitExceeded(reason, detail)


def _decrement(counter: Counter, key: Hashable) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
