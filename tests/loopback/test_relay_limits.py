"""A relay's budget against a caller that uses it for bulk traffic (nat/circuits.py): its first
connection's circuit stops at the byte cap, both ends are told, and another pair's circuit
through the same relay carries on."""

from __future__ import annotations

import pytest
import trio

from nat.circuits import RelayBudget, RelayLimits
from tests.conftest import wait_for
from tests.loopback.hostile import send, sink
from tests.loopback.nodes import cluster
from tests.loopback.test_traversal import LO

pytestmark = pytest.mark.timeout(120)
CAP = 512 * 1024


def metric(node, line: str) -> bool:
    return line in node.metrics.render()


async def test_a_capped_circuit_stops_at_its_cap_while_another_pairs_carries_on(tmp_path):
    async with cluster(tmp_path) as c:
        relay = await c.start(**LO)
        relay.relay.budget = RelayBudget(RelayLimits(circuit_bytes=CAP))
        hidden = [await c.start(join=relay, reachability="private", **LO) for _ in range(2)]
        callers = [await c.start(join=relay, **LO) for _ in range(2)]
        await wait_for(lambda: all(relay.signaling.server.is_registered(str(h.peer_id)) for h in hidden), what="registered")
        received = [sink(h) for h in hidden]
        circuits = []
        for caller, h in zip(callers, hidden):
            circuits.append(await caller.relay.dial(relay.peer_id, h.peer_id))  # a first connection's circuit, capped

        with trio.fail_after(60):
            await send(circuits[0], 8 * CAP)  # the bulk sender: cut at the cap
        await wait_for(lambda: metric(relay, 'overlay_relay_refused_total{reason="limit"} 1'), what="the relay counted the cut")
        assert received[0][0] < CAP, "nothing past the cap reached the far end"
        await wait_for(lambda: metric(callers[0], 'overlay_relay_limited_total{side="caller"} 1')
                       and metric(hidden[0], 'overlay_relay_limited_total{side="callee"} 1'),
                       what="both ends saw their connection end at the relay's limit")

        assert await send(circuits[1], CAP // 4) == CAP // 4
        await wait_for(lambda: received[1][0] == CAP // 4, what="the other pair's bytes all arrived")
        assert len(relay.relay.budget.circuits) == 1, "the other pair's circuit is still open"
