"""Kademlia as a protocol core without I/O: routing table, lookups, stores, wire format."""
