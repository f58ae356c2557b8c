"""The in-memory driver the tests and the simulator share (overlay/kademlia/driver.py): cores
reach each other through it on the simulator's engine and a model of the test's own, lost
messages become the sender's timeouts, timers are re-armed, waits end on an input or a timeout."""

from __future__ import annotations

import random

from overlay.core.peer import PeerInfo
from overlay.kademlia.core import KadConfig, Kademlia, QueryDone, QueryKind, Send
from overlay.kademlia.driver import Links, MemoryDriver, answer, dispatch
from overlay.kademlia.wire import Message, MessageType
from simulations.engine import Scheduler
from tests.kadnet import int_validator


class Model(Links[Kademlia]):
    """A latency per ordered pair (by index), a set of cut pairs, dead nodes; counts bytes."""

    def __init__(self, n: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.cores = [Kademlia(PeerInfo(b"\x00\x24" + rng.getrandbits(288).to_bytes(36, "big"), (b"a%d" % i,)),
                               int_validator(), KadConfig(), rng=random.Random(i)) for i in range(n)]
        self.index = {c.local.peer_id: i for i, c in enumerate(self.cores)}
        self.latency = {(a, b): 0.01 * (1 + (a + b) % 3) for a in range(n) for b in range(n)}
        self.cut: set[tuple[int, int]] = set()
        self.dead: set[int] = set()
        self.bytes_sent = [0] * n
        self.bytes_received = [0] * n

    def core(self, node: Kademlia) -> Kademlia:
        return node

    def resolve(self, peer_id: bytes) -> Kademlia | None:
        i = self.index.get(peer_id)
        return None if i is None else self.cores[i]

    def alive(self, node: Kademlia) -> bool:
        return self.index[node.local.peer_id] not in self.dead

    def size(self, message: Message) -> int:
        return 100

    def sent(self, node: Kademlia, size: int) -> None:
        self.bytes_sent[self.index[node.local.peer_id]] += size

    def received(self, node: Kademlia, size: int) -> None:
        self.bytes_received[self.index[node.local.peer_id]] += size

    def request_delay(self, src: Kademlia, dst: Kademlia, size: int) -> float | None:
        pair = (self.index[src.local.peer_id], self.index[dst.local.peer_id])
        return None if pair in self.cut else self.latency[pair]

    def response_delay(self, dst: Kademlia, src: Kademlia, size: int) -> float | None:
        return self.request_delay(dst, src, size)


def network(n: int) -> tuple[Scheduler, Model, MemoryDriver[Kademlia], list[QueryDone]]:
    sched, model, unclaimed = Scheduler(), Model(n), []
    driver = MemoryDriver(sched, model, lambda node, done: unclaimed.append(done))
    return sched, model, driver, unclaimed


def join_all(sched: Scheduler, model: Model, driver: MemoryDriver[Kademlia]) -> None:
    first = model.cores[0]
    for core in model.cores[1:]:
        driver.apply(core, core.add_address(first.local, sched.now))
        sched.run(sched.now + 1)
        driver.query(core, core.bootstrap, lambda done: None)
        sched.run(sched.now + 5)


def test_cores_find_each_other_through_the_driver_on_the_simulators_engine():
    sched, model, driver, _ = network(12)
    join_all(sched, model, driver)
    found: list[bool] = []
    for i, core in enumerate(model.cores):
        target = model.cores[(i + 5) % 12].local.peer_id
        driver.query(core, lambda now, t=target: core.find_node(t, now),
                     lambda done, t=target: found.append(t in [p.peer_id for p in done.result.closest]))
    sched.run(sched.now + 5)
    assert found == [True] * 12
    assert all(len(c.table) >= 6 for c in model.cores)
    assert sum(model.bytes_sent) == sum(model.bytes_received) > 0  # nothing lost, everything counted


def test_a_lost_request_is_the_senders_timeout_and_the_query_still_ends():
    sched, model, driver, _ = network(4)
    join_all(sched, model, driver)
    model.cut.update({(0, 2), (2, 0)})
    model.dead.add(3)
    failures = model.cores[0].counters.failures
    done: list[QueryDone] = []
    driver.query(model.cores[0], lambda now: model.cores[0].find_node(b"k", now), done.append)
    sched.run(sched.now + 4.9)
    assert not done, "waiting for the cut and the dead peer to time out"
    sched.run(sched.now + 0.2)
    assert len(done) == 1 and done[0].kind is QueryKind.FIND_NODE
    assert model.cores[0].counters.failures >= failures + 2


def test_a_client_is_never_asked_and_a_dead_node_runs_no_queries():
    sched, model, driver, _ = network(3)
    model.cores[2].server = False
    sent = model.cores[1].counters.requests_handled
    driver.apply(model.cores[1], model.cores[1].add_address(model.cores[2].local, 0.0))
    sched.run(10.0)
    assert model.cores[2].counters.requests_handled == 0 and model.cores[1].counters.failures == 1
    assert model.cores[1].counters.requests_handled == sent
    model.dead.add(0)
    assert driver.query(model.cores[0], model.cores[0].bootstrap, lambda done: None) is None


def test_timers_are_re_armed_and_results_nobody_asked_for_go_to_unclaimed():
    sched, model, driver, unclaimed = network(3)
    join_all(sched, model, driver)
    refreshes = len([d for d in unclaimed if d.kind is QueryKind.BOOTSTRAP])
    sched.run(sched.now + KadConfig().refresh_interval + 10)  # each core's refresh timer fires by itself
    assert len([d for d in unclaimed if d.kind is QueryKind.BOOTSTRAP]) >= refreshes + 2


def test_until_ends_on_the_input_that_makes_it_true_or_at_its_timeout():
    sched, model, driver, _ = network(3)
    a, b, c = model.cores
    outcomes: list[tuple[str, bool, float]] = []
    driver.until(a, lambda: True, 5.0, lambda ok: outcomes.append(("at once", ok, sched.now)))
    driver.apply(a, a.add_address(b.local, 0.0))
    driver.until(a, lambda: b.local.peer_id in a.table, 5.0, lambda ok: outcomes.append(("b", ok, sched.now)))
    model.dead.add(2)
    driver.apply(a, a.add_address(c.local, 0.0))
    driver.until(a, lambda: c.local.peer_id in a.table, 5.0, lambda ok: outcomes.append(("c", ok, sched.now)))
    sched.run(10.0)
    rtt = model.latency[(0, 1)] + model.latency[(1, 0)]
    assert outcomes == [("at once", True, 0.0), ("b", True, rtt), ("c", False, 5.0)]


def test_the_helpers_the_trio_adapter_shares():
    core = Kademlia(PeerInfo(b"\x00\x24" + bytes(36)), int_validator())
    (ping,) = core.add_address(PeerInfo(b"\x00\x24" + bytes(35) + b"\x01"), 0.0)
    sends, dones = [], []
    dispatch([ping, QueryDone(7, QueryKind.FIND_NODE, None)], sends.append, dones.append)  # type: ignore[arg-type]
    assert sends == [ping] and [d.query_id for d in dones] == [7]
    assert ping.expects_response and not Send(1, ping.peer, Message(MessageType.ADD_PROVIDER)).expects_response
    assert answer(core, ping, Message(MessageType.FIND_NODE), 1.0) == [] and core.counters.failures == 1, \
        "an answer of another type is a failure"
    (again,) = core.add_address(ping.peer, 2.0)
    answer(core, again, Message(MessageType.PING), 2.1)
    assert core.counters.responses == 1 and ping.peer.peer_id in core.table
