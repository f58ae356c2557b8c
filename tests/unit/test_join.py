"""The join rule the node and the simulator share (overlay.node.roles.Joiner): every transition
of its table, the events it refuses, and the retry schedule."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from overlay.core.errors import ProtocolError
from overlay.node.roles import (
    BOOTSTRAP_BACKOFF, BOOTSTRAP_CHECK, FORGET_AFTER, MIN_SLEEP, Bootstrap, Join, Joiner, JoinState, TryBootstrap, Wake,
)

WAIT = 5.0


@dataclass(eq=False)
class Peer(Bootstrap):
    name: str


def joiner(*names: str) -> tuple[Joiner[Peer], list[Peer], set[Peer]]:
    """A joiner over bootstraps `names`; the returned set is the routing table."""
    peers = [Peer(name=n) for n in names]
    table: set[Peer] = set()
    return Joiner(peers, lambda b: b in table, WAIT), peers, table


def test_wake_with_nothing_due_sleeps_until_the_check():
    join, _, _ = joiner()
    assert join.wake(0.0) == [Wake(BOOTSTRAP_CHECK)] and join.state is JoinState.WAITING  # WAITING -wake-> WAITING


def test_a_round_tries_every_due_bootstrap_and_joins_once_the_last_is_back():
    join, (a, b), table = joiner("a", "b")
    assert join.wake(0.0) == [TryBootstrap(a, WAIT), TryBootstrap(b, WAIT)]  # WAITING -wake-> TRYING
    assert join.state is JoinState.TRYING and a.attempts == b.attempts == 1
    table.add(a)
    assert join.answered(a, 0.2) == [] and join.state is JoinState.TRYING  # TRYING -answered, more out-> TRYING
    table.add(b)
    assert join.answered(b, 0.3) == [Join()] and join.state is JoinState.JOINING  # -the last, more in table-> JOINING
    assert join.joined(1.0) == [Wake(1.0 + BOOTSTRAP_CHECK)]  # JOINING -joined-> WAITING
    assert join.state is JoinState.WAITING and join.joins == 1


def test_one_answer_of_two_is_enough_to_join():
    join, (a, b), table = joiner("a", "b")
    join.wake(0.0)
    assert join.failed(a, "refused", 0.1) == []  # TRYING -failed, more out-> TRYING
    table.add(b)
    assert join.answered(b, 0.4) == [Join()]


def test_a_round_that_reaches_no_one_sleeps_until_the_first_retry():
    join, (a,), _ = joiner("a")
    join.wake(0.0)
    assert join.failed(a, "refused", 2.0) == [Wake(2.0 + BOOTSTRAP_BACKOFF[0])]  # -the last, not more-> WAITING
    assert join.state is JoinState.WAITING and a.last_error == "refused"


def test_a_bootstrap_out_of_the_table_again_is_retried_and_brings_a_rejoin():
    join, (a,), table = joiner("a")
    join.wake(0.0)
    table.add(a)
    join.answered(a, 0.1)
    join.joined(0.5)
    assert join.wake(30.5) == [Wake(60.5)]  # still in the table: nothing to do
    table.discard(a)  # evicted after failures
    assert join.wake(60.5) == [TryBootstrap(a, WAIT)] and a.attempts == 2
    table.add(a)
    assert join.answered(a, 61.0) == [Join()]
    join.joined(61.5)
    assert join.joins == 2


def test_retries_back_off_from_one_second_doubling_to_a_minute_and_reset_on_an_answer():
    join, (a,), table = joiner("a")
    now, tries, wakes = 0.0, [], []
    while len(tries) < 9:
        (action,) = join.wake(now)  # one bootstrap: one try per round, or nothing due yet
        if isinstance(action, TryBootstrap):
            tries.append(now)
            (action,) = join.failed(a, "no answer", now)
        wakes.append(action.at - now)
        now = action.at
    assert [b - a for a, b in zip(tries, tries[1:])] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert max(wakes) == BOOTSTRAP_CHECK, "a minute's backoff is slept in two checks"
    assert a.attempts == 9
    join.wake(a.next_try)
    table.add(a)
    join.answered(a, now)
    assert a.backoff == BOOTSTRAP_BACKOFF[0] and a.last_error == ""


def test_the_sleep_is_at_least_half_a_second_and_at_most_the_check_interval():
    join, (a, b), table = joiner("a", "b")
    join.wake(0.0)
    join.failed(a, "x", 0.0)  # retry due at 1.0
    (wake,) = join.failed(b, "x", 0.9)  # retry due at 1.9; next due is a's, 0.1 s away
    assert wake == Wake(0.9 + MIN_SLEEP)
    assert join.wake(wake.at) == [TryBootstrap(a, WAIT)]  # b is not due yet
    table.add(a)
    (action,) = join.answered(a, 1.5)
    assert action == Join()
    assert join.joined(1.6) == [Wake(2.1)]  # b's retry is due in 0.3 s: half a second at least


def test_a_bootstrap_reached_elsewhere_during_a_round_counts_for_the_join():
    """The join compares the table's bootstraps before and after the round, as the node did."""
    join, (a, b), table = joiner("a", "b")
    table.add(b)
    assert join.wake(0.0) == [TryBootstrap(a, WAIT)]
    assert join.failed(a, "x", 1.0) == [Wake(2.0)], "no more bootstraps in the table than before"


@pytest.mark.parametrize("event", ["answered", "failed", "joined"])
def test_events_outside_a_round_are_refused(event):
    join, (a,), _ = joiner("a")
    call = {"answered": lambda: join.answered(a, 0.0), "failed": lambda: join.failed(a, "x", 0.0),
            "joined": lambda: join.joined(0.0)}[event]
    with pytest.raises(ProtocolError):
        call()  # WAITING


def test_impossible_events_during_a_round_and_a_join_are_refused():
    join, (a, b), table = joiner("a", "b")
    join.wake(0.0)
    with pytest.raises(ProtocolError):
        join.wake(0.1)  # TRYING: a round is under way
    with pytest.raises(ProtocolError):
        join.joined(0.1)  # TRYING: no Join was asked for
    join.failed(a, "x", 0.1)
    with pytest.raises(ProtocolError):
        join.failed(a, "x", 0.2)  # a is back already
    with pytest.raises(ProtocolError):
        join.answered(Peer(name="stranger"), 0.2)
    table.add(b)
    join.answered(b, 0.3)
    assert join.state is JoinState.JOINING
    for wrong in (lambda: join.wake(0.4), lambda: join.answered(b, 0.4), lambda: join.failed(a, "x", 0.4)):
        with pytest.raises(ProtocolError):
            wrong()


def test_a_remembered_peer_is_dropped_after_failing_its_tries_and_a_configured_one_never_is():
    configured, remembered = Peer(name="boot"), Peer(name="old", remembered=True)
    join = Joiner([configured, remembered], lambda b: False, WAIT)
    now = 0.0
    for _ in range(FORGET_AFTER):
        tries = join.wake(now)
        assert TryBootstrap(remembered, WAIT) in tries
        for t in tries:
            join.failed(t.bootstrap, "refused", now)
        now = max(b.next_try for b in join.bootstraps)
    assert join.bootstraps == [configured] and configured.attempts == FORGET_AFTER
    assert join.wake(now) == [TryBootstrap(configured, WAIT)], "the configured bootstrap is tried for ever"
