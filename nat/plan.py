"""What a peer record's addresses mean for a dial, without I/O: direct addresses, and relay
circuits (`<relay addr>/p2p/<relay>/p2p-circuit`, one per signalling registration of a node
behind NAT). The node's traversal and the simulator both plan from here."""

from __future__ import annotations

from collections.abc import Iterable

import multiaddr

from nat.strategy import Plan
from overlay.core.addrs import dialable
from overlay.core.errors import RecordError
from overlay.core.records import peer_id_from_str, peer_id_to_str

CIRCUIT = "/p2p-circuit"


def circuit_addr(relay_addr: multiaddr.Multiaddr, relay: bytes) -> multiaddr.Multiaddr:
    """`<relay addr>/p2p/<relay>/p2p-circuit`: what a registered node publishes per registration."""
    return multiaddr.Multiaddr(f"{relay_addr}/p2p/{peer_id_to_str(relay)}{CIRCUIT}")


def parse_circuit(addr: multiaddr.Multiaddr) -> tuple[bytes, multiaddr.Multiaddr] | None:
    """(relay's binary peer ID, relay's own address) of a circuit address; None for any other."""
    text = str(addr)
    if not text.endswith(CIRCUIT):
        return None
    head, sep, relay = text.removesuffix(CIRCUIT).rpartition("/p2p/")
    if not sep or not head:
        return None
    try:
        return peer_id_from_str(relay), multiaddr.Multiaddr(head)
    except (RecordError, ValueError, TypeError, multiaddr.exceptions.Error):
        return None


def plan_for(addrs: Iterable[multiaddr.Multiaddr]) -> Plan:
    """The dial plan of a record's addresses: its direct ones in order, then its relays."""
    addrs = list(addrs)
    relays = [(circuit[0], (str(circuit[1]),)) for circuit in map(parse_circuit, addrs) if circuit is not None]
    return Plan(tuple(str(a) for a in addrs if dialable(a)), tuple(relays))
