"""overlay-node: a peer-to-peer overlay node (identity, Kademlia DHT, peer records, local API)."""

__version__ = "0.1.0"
