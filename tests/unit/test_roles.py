"""The decisions the node and the simulator share: the dial plan of a record's addresses, what a
record carries, which found record is believed."""

from __future__ import annotations

import multiaddr
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nat.plan import circuit_addr, parse_circuit, plan_for
from overlay.core.peer import PeerInfo
from overlay.core.records import MAX_RECORD_ADDRS, PeerRecord, peer_id_from_public_key, peer_id_to_str, seal_peer_record
from overlay.node.roles import best_record, record_addrs

M = multiaddr.Multiaddr
KEY, OTHER_KEY = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
ME, RELAY = peer_id_from_public_key(KEY.public_key()), peer_id_from_public_key(OTHER_KEY.public_key())


def test_circuits_parse_to_the_relay_and_its_address_and_nothing_else_does():
    circuit = circuit_addr(M("/ip4/198.18.0.7/tcp/4001"), RELAY)
    assert str(circuit) == f"/ip4/198.18.0.7/tcp/4001/p2p/{peer_id_to_str(RELAY)}/p2p-circuit"
    assert parse_circuit(circuit) == (RELAY, M("/ip4/198.18.0.7/tcp/4001"))
    assert parse_circuit(M("/ip4/198.18.0.7/tcp/4001")) is None
    assert parse_circuit(M(f"/p2p/{peer_id_to_str(RELAY)}/p2p-circuit")) is None  # no relay address
    assert parse_circuit(M(f"/ip4/198.18.0.7/tcp/4001/p2p/{peer_id_to_str(RELAY)}")) is None


def test_a_plan_takes_dialable_addresses_in_order_then_the_relays():
    circuit = circuit_addr(M("/ip4/198.18.0.7/tcp/4001"), RELAY)
    plan = plan_for([M("/ip4/198.18.0.9/tcp/1"), circuit, M("/ip4/198.18.0.9/udp/2/quic-v1"), M("/ip4/198.18.0.9/tcp/3/ws")])
    assert plan.direct == ("/ip4/198.18.0.9/tcp/1", "/ip4/198.18.0.9/tcp/3/ws")
    assert plan.relays == ((RELAY, ("/ip4/198.18.0.7/tcp/4001",)),)


def test_a_public_node_publishes_its_addresses_and_one_behind_nat_one_circuit_per_registration():
    own = [M("/ip4/198.18.0.9/tcp/4001"), M("/ip4/198.18.0.9/tcp/4002/ws")]
    relay = PeerInfo(RELAY, (M("/ip4/198.18.0.7/udp/9/quic-v1").to_bytes(), M("/ip4/198.18.0.7/tcp/4001").to_bytes(),
                             M("/ip4/198.18.0.8/tcp/4001").to_bytes()))
    assert record_addrs(True, own, [relay]) == tuple(a.to_bytes() for a in own)
    assert record_addrs(False, own, [relay]) == (circuit_addr(M("/ip4/198.18.0.7/tcp/4001"), RELAY).to_bytes(),)
    assert record_addrs(False, own, [PeerInfo(RELAY, ())]) == ()
    many = [M(f"/ip4/198.18.1.{i}/tcp/4001") for i in range(MAX_RECORD_ADDRS + 5)]
    assert len(record_addrs(True, many, [])) == MAX_RECORD_ADDRS


def test_the_newest_valid_record_of_the_peer_wins():
    old, new = (seal_peer_record(PeerRecord(ME, seq, ()), KEY) for seq in (1, 5))
    someone_else = seal_peer_record(PeerRecord(RELAY, 9, ()), OTHER_KEY)
    forged = bytearray(seal_peer_record(PeerRecord(ME, 7, ()), KEY))
    forged[-1] ^= 1
    assert best_record([old, someone_else, bytes(forged), new, b"junk"], ME).seq == 5
    assert best_record([someone_else], ME) is None
