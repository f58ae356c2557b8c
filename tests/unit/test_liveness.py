"""The connection-liveness core (overlay.core.liveness): when each connection is pinged, and what
a failed ping leads to."""

from __future__ import annotations

from overlay.core.liveness import Close, Liveness, Ping, Redial


def test_a_connection_is_pinged_one_interval_after_it_is_seen_and_again_after_each_answer():
    core = Liveness(interval=10.0)
    conns = {"c1": ("p1", True)}
    assert core.tick(0.0, conns) == []
    assert core.tick(9.9, conns) == []
    assert core.tick(10.0, conns) == [Ping("c1")]
    assert core.tick(15.0, conns) == [], "one ping in flight per connection"
    core.answered("c1", 16.0)
    assert core.tick(25.9, conns) == []
    assert core.tick(26.0, conns) == [Ping("c1")]
    assert (core.stats.pings, core.stats.answered) == (2, 1)


def test_a_failed_ping_closes_that_connection_and_redials_a_peer_we_dialed_only_when_none_is_left():
    core = Liveness(interval=1.0)
    conns = {"direct": ("p", True), "relayed": ("p", True), "inbound": ("q", False)}
    core.tick(0.0, conns)
    assert set(core.tick(1.0, conns)) == {Ping("direct"), Ping("relayed"), Ping("inbound")}
    assert core.failed("direct", 2.0, "no answer") == [Close("direct", "no answer")], "p still has its relayed one"
    assert core.failed("relayed", 2.0, "reset") == [Close("relayed", "reset"), Redial("p")]
    assert core.failed("inbound", 2.0, "reset") == [Close("inbound", "reset")], "q dialed us: it redials"
    assert core.failed("inbound", 2.5, "reset") == [], "already gone"
    assert (core.stats.closed, core.stats.redials) == (3, 1)


def test_connections_that_closed_by_themselves_are_forgotten():
    core = Liveness(interval=1.0)
    core.tick(0.0, {"c1": ("p", True)})
    assert core.tick(1.0, {}) == []
    assert core.failed("c1", 1.5, "late") == [], "a ping that fails after its connection closed changes nothing"
    assert core.stats.closed == 0


def test_redials_beyond_the_budget_are_refused_and_counted_until_the_window_moves_on():
    core = Liveness(interval=1.0, redial_burst=2, redial_window=60.0)
    conns = {f"c{i}": (f"p{i}", True) for i in range(4)}
    core.tick(0.0, conns)
    core.tick(1.0, conns)
    redials = [a for i in range(3) for a in core.failed(f"c{i}", 2.0, "dead") if isinstance(a, Redial)]
    assert redials == [Redial("p0"), Redial("p1")]
    assert core.stats.redials_refused == 1
    assert Redial("p3") in core.failed("c3", 62.5, "dead"), "the first redials left the window"
