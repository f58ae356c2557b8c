"""The node's decisions that do not need the network, shared by the node and the simulator:
what a node publishes in its peer record, and which of the records a lookup found it believes.
No I/O: multiaddrs and records in, multiaddrs and records out."""

from __future__ import annotations

from collections.abc import Iterable

import multiaddr

from nat.plan import circuit_addr
from overlay.core.addrs import dialable, strip_p2p
from overlay.core.errors import RecordError
from overlay.core.records import MAX_RECORD_ADDRS, PeerRecord, open_peer_record
from overlay.kademlia.wire import PeerInfo


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
