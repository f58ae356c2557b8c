"""Addresses as the node dials them: the dial plan (the last address that worked first, duplicates
and undialable addresses dropped), and which addresses a DHT answer may make the node dial."""

from __future__ import annotations

import multiaddr

from overlay.core.addrs import addr_scope, answer_addrs, plan_dial

M = multiaddr.Multiaddr
PEER = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"


def test_dial_plan_orders_dedupes_and_drops_undialable():
    tcp1, tcp2, ws = M("/ip4/127.0.0.1/tcp/1"), M("/ip4/127.0.0.1/tcp/2"), M("/ip4/127.0.0.1/tcp/3/ws")
    quic, circuit = M("/ip4/127.0.0.1/udp/4/quic-v1"), M(f"/ip4/127.0.0.1/tcp/5/p2p/{PEER}/p2p-circuit")
    with_id = M(f"/ip4/127.0.0.1/tcp/2/p2p/{PEER}")
    assert plan_dial([tcp1, tcp2, ws, quic, circuit, with_id], None) == [tcp1, tcp2, ws]
    assert plan_dial([tcp1, tcp2, ws], tcp2) == [tcp2, tcp1, ws]
    assert plan_dial([tcp1, ws], tcp2) == [tcp1, ws]  # what worked before but is no longer listed


def test_each_address_has_the_scope_of_its_first_component():
    cases = {
        "/ip4/127.0.0.1/tcp/1": "loopback", "/ip6/::1/tcp/1": "loopback",
        "/ip4/100.64.1.2/tcp/1": "local", "/ip4/198.18.1.2/tcp/1": "local",
        "/ip6/2001:db8::1/tcp/1": "local", "/ip6/fd00::1/tcp/1": "local",
        "/ip4/203.0.114.1/tcp/1": "global", "/ip6/2a00::1/tcp/1": "global", "/dns4/example.org/tcp/1": "global",
        f"/p2p/{PEER}/p2p-circuit/p2p/{PEER}": "global",
        "/ip4/0.0.0.0/tcp/1": "", "/ip4/224.0.0.1/tcp/1": "", "/ip4/169.254.1.1/tcp/1": "", "/ip6/fe80::1/tcp/1": "",
    }
    assert {a: addr_scope(M(a).to_bytes()) for a in cases} == cases
    assert addr_scope(b"") == addr_scope(b"\x04\x7f") == "", "short or unknown: never dialed"


def test_an_answer_from_the_internet_names_only_global_addresses_and_a_few():
    lan, home, wide = M("/ip4/100.64.1.9/tcp/1").to_bytes(), M("/ip4/127.0.0.1/tcp/2").to_bytes(), M("/dns4/peer.example.org/tcp/3").to_bytes()
    assert answer_addrs([lan, home, wide], "global", 8) == (wide,)
    assert answer_addrs([lan, home, wide], "local", 8) == (lan, wide), "a LAN peer may name LAN addresses"
    assert answer_addrs([lan, home, wide], "loopback", 8) == (home, wide)
    assert answer_addrs([wide] * 20, "global", 8) == (wide,) * 8
