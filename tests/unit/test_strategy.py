"""The dial strategy driven directly: direct first, relay at once when needed, upgrade in the
background, relay kept where no direct path exists."""

from __future__ import annotations

import pytest

from nat.strategy import (
    DialConnected, DialDirect, DialRelay, DialState, DialStrategy, Failed, GaveUp, Plan, StrategyConfig, StrategyError,
    Upgrade, Upgraded,
)

R1, R2 = b"relay-1", b"relay-2"
RELAYS = ((R1, ("/ip4/198.18.1.2/tcp/4001",)), (R2, ("/ip4/198.18.4.2/tcp/4001",)))


def test_direct_only_peer_is_dialed_directly():
    s = DialStrategy(Plan(("/ip4/198.18.4.2/tcp/4001",), ()))
    assert s.start(0.0) == [DialDirect(("/ip4/198.18.4.2/tcp/4001",))]
    assert s.direct_done(True, 0.01) == [DialConnected("direct")]
    assert s.finished and s.state is DialState.DIRECT


def test_no_usable_address_fails_at_once():
    s = DialStrategy(Plan((), ()))
    assert s.start(0.0) == [Failed("the record has no usable address")]


def test_peer_behind_nat_is_relayed_at_once_then_upgraded():
    s = DialStrategy(Plan((), RELAYS))
    assert s.start(0.0) == [DialRelay(*RELAYS[0])]
    assert s.relay_done(R1, True, 0.05) == [DialConnected("relayed"), Upgrade(R1)]
    assert s.upgrade_done(True, 0.6) == [Upgraded()]
    assert s.finished and s.state is DialState.DIRECT


def test_failed_relay_moves_to_the_next_and_all_failing_fails():
    s = DialStrategy(Plan((), RELAYS))
    s.start(0.0)
    assert s.relay_done(R1, False, 0.1) == [DialRelay(*RELAYS[1])]
    with pytest.raises(StrategyError):
        s.relay_done(R1, True, 0.2)  # each relay dial is answered once: a second answer is an adapter's bug
    assert s.relay_done(R2, False, 0.3) == [Failed("every address and relay failed")]


def test_direct_first_relay_after_a_delay_and_at_once_when_direct_fails():
    s = DialStrategy(Plan(("/ip4/100.64.1.2/tcp/4001",), RELAYS), StrategyConfig(relay_delay=0.25))
    assert s.start(0.0) == [DialDirect(("/ip4/100.64.1.2/tcp/4001",))]
    assert s.next_timer() == 0.25
    assert s.handle_timer(0.2) == []
    assert s.handle_timer(0.25) == [DialRelay(*RELAYS[0])]
    s = DialStrategy(Plan(("/ip4/100.64.1.2/tcp/4001",), RELAYS))
    s.start(0.0)
    assert s.direct_done(False, 0.01) == [DialRelay(*RELAYS[0])]
    assert s.next_timer() is None


def test_direct_winning_the_race_releases_a_late_relay():
    s = DialStrategy(Plan(("/ip4/198.18.4.2/tcp/4001",), RELAYS))
    s.start(0.0)
    s.handle_timer(0.25)
    assert s.direct_done(True, 0.3) == [DialConnected("direct")]
    assert s.relay_done(R1, True, 0.35) == [Upgraded()]


def test_direct_dial_succeeding_after_the_relay_counts_as_the_upgrade():
    s = DialStrategy(Plan(("/ip4/198.18.4.2/tcp/4001",), RELAYS))
    s.start(0.0)
    s.handle_timer(0.25)
    assert s.relay_done(R1, True, 0.3) == [DialConnected("relayed"), Upgrade(R1)]
    assert s.direct_done(True, 2.0) == [Upgraded()]


def test_upgrade_retries_with_growing_pauses_then_keeps_the_relay():
    s = DialStrategy(Plan((), RELAYS), StrategyConfig(upgrade_attempts=3, upgrade_retry=30.0))
    s.start(0.0)
    s.relay_done(R1, True, 0.1)
    assert s.upgrade_done(False, 10.0) == []
    assert s.next_timer() == 40.0
    assert s.handle_timer(40.0) == [Upgrade(R1)]
    assert s.upgrade_done(False, 50.0) == []
    assert s.next_timer() == 110.0
    assert s.handle_timer(110.0) == [Upgrade(R1)]
    assert s.upgrade_done(False, 120.0) == [GaveUp()]
    assert s.finished and s.state is DialState.RELAYED and s.next_timer() is None


def test_an_event_the_strategy_did_not_ask_for_raises():
    s = DialStrategy(Plan(("/ip4/198.18.4.2/tcp/4001",), RELAYS))
    with pytest.raises(StrategyError, match="no direct dial"):
        s.direct_done(True, 0.0)  # before start
    s.start(0.0)
    with pytest.raises(StrategyError, match="not asked for"):
        s.relay_done(R1, True, 0.1)  # the relay is only dialed after relay_delay
    with pytest.raises(StrategyError, match="no upgrade"):
        s.upgrade_done(True, 0.1)
    with pytest.raises(StrategyError, match="start in state dialing"):
        s.start(0.1)
    assert s.handle_timer(0.3) == [DialRelay(R1, RELAYS[0][1])]
    assert s.relay_done(R1, True, 0.4) == [DialConnected("relayed"), Upgrade(R1)]
    assert s.direct_done(True, 0.5) == [Upgraded()]  # the direct dial, late: a result the table expects
    assert s.state is DialState.DIRECT and s.finished
    with pytest.raises(StrategyError):
        s.direct_done(True, 0.6)  # asked once, answered once
