"""The resource manager's core, driven directly: each scope's limit bites, is counted, and
frees its place when a connection or stream ends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.core.resources import LimitExceeded, ResourceLimits, ResourceManager

pytestmark = pytest.mark.timeout(30)


def refused(rm: ResourceManager, ip: str, now: float = 0.0) -> str:
    with pytest.raises(LimitExceeded) as e:
        rm.accept(ip, now)
    return e.value.reason


def test_one_ip_holds_at_most_its_pending_handshakes_and_others_still_get_in():
    rm = ResourceManager(ResourceLimits(pending_per_ip=4, accept_rate=(100.0, 100.0)))
    tickets = [rm.accept("198.18.0.9", 0.0) for _ in range(4)]
    assert refused(rm, "198.18.0.9") == "pending-ip"
    other = rm.accept("198.18.1.9", 0.0)
    rm.closed(tickets[0])
    rm.accept("198.18.0.9", 0.0)
    rm.established(other, known=False)
    assert (rm.pending, rm.inbound, rm.refused["pending-ip"]) == (4, 1, 1)


def test_per_ip_and_per_group_limits_count_open_connections_too():
    rm = ResourceManager(ResourceLimits(per_ip=3, per_group=5, pending_per_ip=3, accept_rate=(100.0, 100.0)))
    for _ in range(3):
        rm.established(rm.accept("198.18.0.9", 0.0), known=False)
    assert refused(rm, "198.18.0.9") == "ip"
    rm.accept("198.18.0.10", 0.0)
    rm.accept("198.18.0.11", 0.0)
    assert refused(rm, "198.18.0.12") == "group", "the /24 is full"
    rm.accept("198.18.1.1", 0.0)  # another /24
    assert rm.refused == {"ip": 1, "group": 1}


def test_ipv6_addresses_share_their_slash_48():
    rm = ResourceManager(ResourceLimits(per_group=2, accept_rate=(100.0, 100.0)))
    rm.accept("2001:db8:0:1::1", 0.0)
    rm.accept("2001:db8:0:2::1", 0.0)
    assert refused(rm, "2001:db8:0:3::1") == "group"
    rm.accept("2001:db8:1::1", 0.0)


def test_new_connections_from_one_ip_are_rate_limited_and_the_bucket_refills():
    rm = ResourceManager(ResourceLimits(accept_rate=(2.0, 3.0)))
    for _ in range(3):
        rm.closed(rm.accept("198.18.0.9", 0.0))
    assert refused(rm, "198.18.0.9", 0.1) == "accept-rate"
    rm.accept("198.18.0.9", 1.0)  # two more a second later


def test_the_pending_limit_holds_for_everyone_even_exempt_addresses():
    rm = ResourceManager(ResourceLimits(pending=3))
    for _ in range(3):
        rm.accept("127.0.0.1", 0.0)
    assert refused(rm, "127.0.0.1") == "pending"
    assert refused(rm, "198.18.0.9") == "pending"


def test_exempt_networks_skip_the_per_ip_limits_only():
    rm = ResourceManager(ResourceLimits(per_ip=1, pending_per_ip=1, accept_rate=(0.001, 1.0)))
    for _ in range(20):
        rm.accept("127.0.0.1", 0.0)
    rm.accept("127.0.1.2", 0.0)
    assert refused(rm, "127.0.1.2") == "pending-ip", "127.0.0.1 is exempt by default, not all of 127/8"


def test_strangers_cannot_take_the_reserve_that_known_peers_and_our_dials_keep():
    limits = ResourceLimits(connections=8, per_ip=100, pending_per_ip=100, per_group=100, accept_rate=(100.0, 100.0))
    assert limits.inbound == 6
    rm = ResourceManager(limits)
    for i in range(6):
        rm.established(rm.accept(f"198.18.{i}.1", 0.0), known=False)
    stranger = rm.accept("198.18.9.1", 0.0)
    with pytest.raises(LimitExceeded, match="kept for known peers"):
        rm.established(stranger, known=False)
    rm.closed(stranger)
    friend = rm.accept("198.18.9.2", 0.0)
    rm.established(friend, known=True)
    assert (rm.inbound, rm.pending, rm.refused["inbound"]) == (7, 0, 1)


def test_closing_twice_or_after_refusal_frees_a_place_once():
    rm = ResourceManager(ResourceLimits(pending_per_ip=1, per_ip=1, accept_rate=(100.0, 100.0)))
    ticket = rm.accept("198.18.0.9", 0.0)
    rm.established(ticket, known=False)
    rm.established(ticket, known=False)
    rm.closed(ticket)
    rm.closed(ticket)
    assert (rm.pending, rm.inbound) == (0, 0)
    rm.established(ticket, known=False)  # a closed ticket cannot come back
    assert rm.inbound == 0
    rm.accept("198.18.0.9", 0.0)


def test_streams_per_connection_in_all_and_per_protocol():
    rm = ResourceManager(ResourceLimits(streams=5, streams_per_connection=3, streams_per_protocol=2))
    a, b = object(), object()
    for _ in range(3):
        rm.open_stream(a)
    with pytest.raises(LimitExceeded) as e:
        rm.open_stream(a)
    assert e.value.reason == "streams-connection"
    rm.open_stream(b)
    rm.open_stream(b)
    with pytest.raises(LimitExceeded) as e:
        rm.open_stream(b)
    assert e.value.reason == "streams"
    rm.close_stream(a)
    rm.open_stream(b)
    rm.open_protocol("peer", "/kad")
    rm.open_protocol("peer", "/kad")
    with pytest.raises(LimitExceeded, match="2 streams of /kad"):
        rm.open_protocol("peer", "/kad")
    rm.open_protocol("peer", "/relay", limit=32)
    rm.open_protocol("other", "/kad")
    rm.close_protocol("peer", "/kad")
    rm.open_protocol("peer", "/kad")
    assert rm.refused == {"streams-connection": 1, "streams": 1, "streams-protocol": 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["accept", "establish", "close"]), st.integers(0, 5), st.booleans()),
                max_size=80))
def test_counts_never_drift_whatever_the_order_of_events(events):
    """Every count returns to zero once every ticket is closed, and no limit is ever exceeded."""
    limits = ResourceLimits(connections=8, pending=4, per_ip=3, pending_per_ip=2, per_group=5, accept_rate=(1e6, 1e6))
    rm = ResourceManager(limits)
    tickets = []
    ips = ["198.18.0.1", "198.18.0.2", "198.18.1.1", "127.0.0.1", "2001:db8::1", ""]
    for kind, n, known in events:
        try:
            if kind == "accept":
                tickets.append(rm.accept(ips[n], 0.0))
            elif tickets:
                ticket = tickets[n % len(tickets)]
                if kind == "establish":
                    rm.established(ticket, known)
                else:
                    rm.closed(ticket)
        except LimitExceeded:
            pass
        assert 0 <= rm.pending <= limits.pending and 0 <= rm.inbound <= limits.connections
        assert all(v <= limits.per_ip for v in rm._per_ip.values())
    for ticket in tickets:
        rm.closed(ticket)
    assert (rm.pending, rm.inbound, dict(rm._per_ip), dict(rm._per_group), dict(rm._pending_ip)) == (0, 0, {}, {}, {})
