"""An in-memory network in virtual time that drives Kademlia cores directly (no I/O): the
shared in-memory driver (overlay/kademlia/driver.py) on a plain heap clock and a simple model
(fixed latency, dead nodes silent)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from overlay.core.errors import RecordError
from overlay.core.peer import PeerInfo
from overlay.kademlia.core import DhtAction, KadConfig, Kademlia, QueryDone
from overlay.kademlia.driver import Links, MemoryDriver
from overlay.kademlia.store import NamespacedValidator


class IntValidator:
    """Test namespace /t/: values are decimal integers; the largest wins; "bad" is invalid."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.isdigit():
            raise RecordError("not a number")

    def select(self, key: bytes, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: int(values[i]))


def int_validator() -> NamespacedValidator:
    return NamespacedValidator({b"t": IntValidator()})


class Clock:
    """Events in time order, ties in the order they were scheduled; stepped one at a time so
    that `KadNet.run_until` can stop as soon as its condition holds."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), fn))

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def step(self) -> None:
        self.now, _, fn = heapq.heappop(self._heap)
        fn()


class KadNet(Links[Kademlia]):
    def __init__(self, seed: int = 1, latency: float = 0.01, config: KadConfig = KadConfig()) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.config = config
        self.clock = Clock()
        self.nodes: dict[bytes, Kademlia] = {}
        self.dead: set[bytes] = set()
        self.done: dict[tuple[bytes, int], QueryDone] = {}
        self.messages = 0
        self.driver = MemoryDriver(self.clock, self, self._unclaimed)

    @property
    def now(self) -> float:
        return self.clock.now

    def add_node(self, server: bool = True) -> Kademlia:
        pid = b"\x00\x24" + self.rng.getrandbits(36 * 8).to_bytes(36, "big")
        node = Kademlia(PeerInfo(pid, (b"addr-" + pid[-4:],)), int_validator(), self.config, server, random.Random(self.rng.random()))
        self.nodes[pid] = node
        return node

    def apply(self, owner: bytes, actions: list[DhtAction]) -> None:
        self.driver.apply(self.nodes[owner], actions)

    def run_until(self, condition: Callable[[], bool], limit: float = 600.0) -> None:
        end = self.now + limit
        while not condition():
            at = self.clock.next_time()
            if at is None or at > end:
                raise AssertionError(f"condition not met by t={end}")
            self.clock.step()

    def run_query(self, node: Kademlia, start: tuple[int, list[DhtAction]]) -> QueryDone:
        query_id, actions = start
        self.driver.apply(node, actions)
        key = (node.local.peer_id, query_id)
        self.run_until(lambda: key in self.done)
        return self.done.pop(key)

    def build(self, n: int) -> list[Kademlia]:
        """n server nodes, each joining through the first one."""
        nodes = [self.add_node() for _ in range(n)]
        first = nodes[0]
        for node in nodes[1:]:
            self.apply(node.local.peer_id, node.add_address(first.local, self.now))
            self.run_until(lambda: first.local.peer_id in node.table)
            self.run_query(node, node.bootstrap(self.now))
        return nodes

    # ---- the model: every message takes `latency`; a dead node is silent -----------------------

    def _unclaimed(self, node: Kademlia, done: QueryDone) -> None:
        self.done[(node.local.peer_id, done.query_id)] = done

    def core(self, node: Kademlia) -> Kademlia:
        return node

    def resolve(self, peer_id: bytes) -> Kademlia | None:
        return self.nodes.get(peer_id)

    def alive(self, node: Kademlia) -> bool:
        return node.local.peer_id not in self.dead

    def sent(self, node: Kademlia, size: int) -> None:
        self.messages += 1

    def request_delay(self, src: Kademlia, dst: Kademlia, size: int) -> float:
        return self.latency

    def response_delay(self, dst: Kademlia, src: Kademlia, size: int) -> float:
        return self.latency
