"""An in-memory network in virtual time that drives Kademlia cores directly (no I/O)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable

from overlay.core.errors import RecordError
from overlay.kademlia.core import Action, KadConfig, Kademlia, QueryDone, Send
from overlay.kademlia.store import NamespacedValidator
from overlay.kademlia.wire import MessageType, PeerInfo


class IntValidator:
    """Test namespace /t/: values are decimal integers; the largest wins; "bad" is invalid."""

    def validate(self, key: bytes, value: bytes) -> None:
        if not value.isdigit():
            raise RecordError("not a number")

    def select(self, key: bytes, values: list[bytes]) -> int:
        return max(range(len(values)), key=lambda i: int(values[i]))


def int_validator() -> NamespacedValidator:
    return NamespacedValidator({b"t": IntValidator()})


class KadNet:
    def __init__(self, seed: int = 1, latency: float = 0.01, config: KadConfig = KadConfig()) -> None:
        self.rng = random.Random(seed)
        self.latency = latency
        self.config = config
        self.now = 0.0
        self.nodes: dict[bytes, Kademlia] = {}
        self.dead: set[bytes] = set()
        self.done: dict[tuple[bytes, int], QueryDone] = {}
        self.messages = 0
        self._events: list[tuple[float, int, Callable[[], list[Action]], bytes]] = []
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, bytes]] = []
        self._timer_of: dict[bytes, float | None] = {}

    def add_node(self, server: bool = True) -> Kademlia:
        pid = b"\x00\x24" + self.rng.getrandbits(36 * 8).to_bytes(36, "big")
        node = Kademlia(PeerInfo(pid, (b"addr-" + pid[-4:],)), int_validator(), self.config, server, random.Random(self.rng.random()))
        self.nodes[pid] = node
        return node

    def schedule(self, at: float, owner: bytes, fn: Callable[[], list[Action]]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), fn, owner))

    def apply(self, owner: bytes, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, QueryDone):
                self.done[(owner, action.query_id)] = action
            else:
                self._deliver(owner, action)
        self._touch(owner)

    def _touch(self, pid: bytes) -> None:
        """Re-read a node's next timer after anything happened to it (stale heap entries are skipped)."""
        t = self.nodes[pid].next_timer()
        self._timer_of[pid] = t
        if t is not None:
            heapq.heappush(self._timers, (t, next(self._seq), pid))

    def _deliver(self, src: bytes, send: Send) -> None:
        self.messages += 1
        dst = self.nodes.get(send.peer.peer_id)
        if dst is None or send.peer.peer_id in self.dead or not dst.server:
            return  # silence: the sender's timeout fires
        arrive = self.now + self.latency

        def on_request() -> list[Action]:
            response, actions = dst.handle_request(self.nodes[src].local, send.message, self.now)
            self.apply(dst.local.peer_id, actions)
            if response is not None and send.message.type is not MessageType.ADD_PROVIDER:
                self.schedule(self.now + self.latency, src, lambda: self.nodes[src].handle_response(send.request_id, response, self.now))
            return []

        self.schedule(arrive, send.peer.peer_id, on_request)

    def run_until(self, condition: Callable[[], bool], limit: float = 600.0) -> None:
        end = self.now + limit
        while not condition():
            while self._timers and self._timer_of.get(self._timers[0][2]) != self._timers[0][0]:
                heapq.heappop(self._timers)
            candidates = [q[0][0] for q in (self._events, self._timers) if q]
            if not candidates or min(candidates) > end:
                raise AssertionError(f"condition not met by t={end}")
            self.now = max(self.now, min(candidates))
            if self._events and self._events[0][0] <= self.now:
                _, _, fn, owner = heapq.heappop(self._events)
                if owner not in self.dead:
                    self.apply(owner, fn())
            elif self._timers:
                _, _, pid = heapq.heappop(self._timers)
                self._timer_of[pid] = None
                if pid not in self.dead:
                    self.apply(pid, self.nodes[pid].handle_timer(self.now))

    def run_query(self, node: Kademlia, start: tuple[int, list[Action]]) -> QueryDone:
        query_id, actions = start
        self.apply(node.local.peer_id, actions)
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
