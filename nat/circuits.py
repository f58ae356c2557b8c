"""A relay's budget, without I/O: which circuits it takes and how fast it carries them.

As circuit relay v2's limits: circuits per registered peer, per caller IP and in all; a first
connection's circuit is capped in bytes and time (its ends are finding a direct path meanwhile);
a persistent circuit, asked for by a caller that found none, is kept but paced to a rate; all
circuits together are paced to the node's relay bandwidth. Both ends are told the limit
(`signaling.messages.Limit`) when the circuit opens.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from signaling import messages


@dataclass(frozen=True)
class RelayLimits:
    """What a relay carries for others (as circuit relay v2's limits, PROTOCOL.md). Two kinds
    of circuit: a first connection, carried at full speed while its ends find a direct path, up
    to `circuit_bytes` and `circuit_seconds`; and a persistent one, asked for by a caller that
    found none, kept for as long as it is used but at most `persistent_rate` bytes a second. All
    circuits together forward at most `bandwidth` bytes a second (the config's relay_bandwidth)."""

    per_peer: int = 32  # circuits to one registered peer
    per_ip: int = 16  # circuits from callers at one IP
    total: int = 512
    persistent_per_peer: int = 8  # persistent circuits to one registered peer
    circuit_bytes: int = 4 * 2**20  # a first connection's circuit, both ways together
    circuit_seconds: float = 300.0  # longer than the traversal's upgrade attempts (about 2.5 min)
    persistent_rate: int = 64 * 1024
    bandwidth: int = 2**20


@dataclass(eq=False)
class Circuit:
    callee: str
    ip: str
    persistent: bool
    deadline: float  # inf for a persistent circuit
    carried: int = 0


class RelayFull(Exception):
    """A circuit refused or ended by a limit; `code` is the wire error code and metric label."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Pace:
    """A byte rate as the time the next byte may go: sending n bytes moves it n/rate on. One
    second of burst is allowed, so a circuit under its rate is never delayed."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = -math.inf

    def take(self, n: int, now: float) -> float:
        """Seconds to wait before sending `n` bytes."""
        self.free_at = max(self.free_at, now - 1.0) + n / self.rate
        return max(0.0, self.free_at - now)


class RelayBudget:
    """The relay's admission and pacing, without I/O: `admit` a circuit, ask `carry` before
    forwarding each chunk (how long to wait, or RelayFull when the circuit is at its cap),
    `release` it when it ends.

        admit --> OPEN --carry (waits under the rates)--> OPEN
                    |--carry over circuit_bytes, or now past its deadline--> RelayFull("limit")
                    '--release--> gone
    """

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.circuits: set[Circuit] = set()
        self._callee: Counter[str] = Counter()
        self._persistent: Counter[str] = Counter()
        self._ip: Counter[str] = Counter()
        self._paces: dict[Circuit, _Pace] = {}
        self._all = _Pace(self.limits.bandwidth)

    def admit(self, callee: str, ip: str, persistent: bool, now: float) -> Circuit:
        limits = self.limits
        if len(self.circuits) >= limits.total:
            raise RelayFull("full", f"relay circuit limit reached ({limits.total})")
        if self._callee[callee] >= limits.per_peer:
            raise RelayFull("full", f"{limits.per_peer} circuits to {callee} already")
        if ip and self._ip[ip] >= limits.per_ip:
            raise RelayFull("full", f"{limits.per_ip} circuits from {ip} already")
        if persistent and self._persistent[callee] >= limits.persistent_per_peer:
            raise RelayFull("full", f"{limits.persistent_per_peer} persistent circuits to {callee} already")
        circuit = Circuit(callee, ip, persistent, math.inf if persistent else now + limits.circuit_seconds)
        self.circuits.add(circuit)
        self._callee[callee] += 1
        if ip:
            self._ip[ip] += 1
        if persistent:
            self._persistent[callee] += 1
            self._paces[circuit] = _Pace(limits.persistent_rate)
        return circuit

    def carry(self, circuit: Circuit, n: int, now: float) -> float:
        """Seconds to wait before forwarding `n` more bytes of `circuit`; raises RelayFull
        ("limit") if they would take a first connection's circuit past its bytes or time."""
        if not circuit.persistent:
            if now >= circuit.deadline:
                raise RelayFull("limit", f"circuit open for {self.limits.circuit_seconds:g} s")
            if circuit.carried + n > self.limits.circuit_bytes:
                raise RelayFull("limit", f"circuit carried {self.limits.circuit_bytes} bytes")
        circuit.carried += n
        pace = self._paces.get(circuit)
        return max(self._all.take(n, now), pace.take(n, now) if pace is not None else 0.0)

    def release(self, circuit: Circuit) -> None:
        if circuit not in self.circuits:
            return
        self.circuits.discard(circuit)
        self._paces.pop(circuit, None)
        for counter, key, counted in ((self._callee, circuit.callee, True), (self._ip, circuit.ip, bool(circuit.ip)),
                                      (self._persistent, circuit.callee, circuit.persistent)):
            if counted:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    def limit_of(self, circuit: Circuit) -> messages.Limit:
        """What the circuit's two ends are told of its limit."""
        if circuit.persistent:
            return messages.Limit(rate=self.limits.persistent_rate)
        return messages.Limit(bytes=self.limits.circuit_bytes, seconds=int(self.limits.circuit_seconds))
