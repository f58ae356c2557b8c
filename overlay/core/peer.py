"""What one node knows of another: its peer ID and the multiaddrs it can be reached at.

Shared by every layer that passes peers around (the DHT's answers, signalling registrations,
the node's record choice), so none of them imports another protocol for it."""

from __future__ import annotations

from typing import NamedTuple


class PeerInfo(NamedTuple):
    """A tuple, not a dataclass: DHT answers are full of them and encoding caches them by hash.
    `connection` is the libp2p Kademlia ConnectionType the DHT carries with a peer."""

    peer_id: bytes  # the binary peer ID (a multihash)
    addrs: tuple[bytes, ...] = ()  # binary multiaddrs
    connection: int = 0
