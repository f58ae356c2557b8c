"""The dial plan: the last address that worked first, duplicates and addresses we cannot dial dropped."""

from __future__ import annotations

import multiaddr

from overlay.core.addrs import plan_dial

M = multiaddr.Multiaddr
PEER = "12D3KooWHu5UDiWacaCzqtHboSFD2b212f53gR4F1NAmHuBtaYvk"


def test_dial_plan_orders_dedupes_and_drops_undialable():
    tcp1, tcp2, ws = M("/ip4/127.0.0.1/tcp/1"), M("/ip4/127.0.0.1/tcp/2"), M("/ip4/127.0.0.1/tcp/3/ws")
    quic, circuit = M("/ip4/127.0.0.1/udp/4/quic-v1"), M(f"/ip4/127.0.0.1/tcp/5/p2p/{PEER}/p2p-circuit")
    with_id = M(f"/ip4/127.0.0.1/tcp/2/p2p/{PEER}")
    assert plan_dial([tcp1, tcp2, ws, quic, circuit, with_id], None) == [tcp1, tcp2, ws]
    assert plan_dial([tcp1, tcp2, ws], tcp2) == [tcp2, tcp1, ws]
    assert plan_dial([tcp1, ws], tcp2) == [tcp1, ws]  # what worked before but is no longer listed
