"""The relay's budget, driven directly with an explicit `now`: admission per peer, per IP and in
all; a first connection's cap in bytes and time; a persistent circuit's rate; the node's
bandwidth over every circuit."""

from __future__ import annotations

import pytest

from nat.circuits import RelayBudget, RelayFull, RelayLimits
from signaling import messages

pytestmark = pytest.mark.timeout(30)


def test_admission_per_callee_per_caller_ip_and_in_all():
    budget = RelayBudget(RelayLimits(per_peer=2, per_ip=3, total=5, persistent_per_peer=1))
    a1 = budget.admit("R1", "198.18.0.1", False, 0.0)
    budget.admit("R1", "198.18.0.2", True, 0.0)
    with pytest.raises(RelayFull, match="2 circuits to R1"):
        budget.admit("R1", "198.18.0.3", False, 0.0)
    budget.admit("R2", "198.18.0.1", True, 0.0)
    with pytest.raises(RelayFull, match="persistent circuits to R2"):
        budget.admit("R2", "198.18.0.1", True, 0.0)
    budget.admit("R3", "198.18.0.1", False, 0.0)
    with pytest.raises(RelayFull, match="from 198.18.0.1"):
        budget.admit("R4", "198.18.0.1", False, 0.0)
    budget.admit("R4", "", False, 0.0)  # no IP: a relayed caller
    with pytest.raises(RelayFull, match="limit reached"):
        budget.admit("R5", "", False, 0.0)
    budget.release(a1)
    budget.release(a1)  # once only
    budget.admit("R5", "198.18.0.1", False, 0.0)
    assert len(budget.circuits) == 5


def test_a_first_connections_circuit_stops_at_its_bytes_and_at_its_time():
    budget = RelayBudget(RelayLimits(circuit_bytes=1000, circuit_seconds=60, bandwidth=10**9))
    circuit = budget.admit("R", "198.18.0.1", False, 0.0)
    assert budget.carry(circuit, 600, 1.0) == 0.0
    with pytest.raises(RelayFull, match="carried 1000 bytes") as e:
        budget.carry(circuit, 401, 2.0)
    assert e.value.code == "limit"
    assert budget.carry(circuit, 400, 2.0) == 0.0  # exactly the cap
    other = budget.admit("R", "198.18.0.2", False, 0.0)
    with pytest.raises(RelayFull, match="open for 60 s"):
        budget.carry(other, 1, 60.0)
    assert budget.limit_of(circuit) == messages.Limit(bytes=1000, seconds=60)


def test_a_persistent_circuit_has_no_cap_but_is_paced_to_its_rate():
    budget = RelayBudget(RelayLimits(persistent_rate=1000, bandwidth=10**9, circuit_bytes=10))
    circuit = budget.admit("R", "198.18.0.1", True, 0.0)
    assert budget.limit_of(circuit) == messages.Limit(rate=1000)
    assert budget.carry(circuit, 1000, 0.0) == 0.0, "one second of burst"
    waits = [budget.carry(circuit, 500, 0.0) for _ in range(4)]
    assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert budget.carry(circuit, 500, 100.0) == 0.0, "idle time refills the burst, no more"
    assert budget.carry(circuit, 1500, 100.0) == pytest.approx(1.0)


def test_the_bandwidth_is_shared_by_every_circuit():
    budget = RelayBudget(RelayLimits(bandwidth=1000, circuit_bytes=10**6))
    a = budget.admit("R1", "198.18.0.1", False, 0.0)
    b = budget.admit("R2", "198.18.0.2", False, 0.0)
    assert budget.carry(a, 1000, 0.0) == 0.0
    assert budget.carry(b, 1000, 0.0) == pytest.approx(1.0), "b waits for what a used"
    # sustained, the two together move 1,000 bytes a second
    now, moved = 2.0, 0
    while now < 12.0:
        wait = budget.carry(a if moved % 2000 else b, 1000, now)
        now += wait
        moved += 1000
    assert 9_000 <= moved <= 12_000


def test_limits_travel_to_both_ends_and_old_messages_still_decode():
    limit = messages.Limit(bytes=4 * 2**20, seconds=300)
    for message in (messages.Connected(limit), messages.Incoming("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", limit),
                    messages.Connect("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN", persistent=True),
                    messages.Connected(messages.Limit(rate=65536))):
        assert messages.decode(messages.encode(message)) == message
    assert messages.decode(b'{"type":"connected"}') == messages.Connected()
    for bad in (b'{"type":"connected","limit":{"bytes":-1}}', b'{"type":"connected","limit":{"speed":1}}',
                b'{"type":"connected","limit":[1]}', b'{"type":"connected","limit":{"rate":true}}'):
        with pytest.raises(Exception, match="limit"):
            messages.decode(bad)
