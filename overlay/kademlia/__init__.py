"""Kademlia: the protocol core without I/O (routing table, lookups, stores, wire format) and its
trio adapter (io.py), which the node runs; the simulator drives the core in virtual time."""
