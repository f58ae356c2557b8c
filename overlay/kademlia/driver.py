"""Kademlia cores run against each other in memory: the one loop that carries out the core's
actions for the tests (tests/kadnet.py) and the simulator (simulations/network.py).

The caller brings the clock (`Scheduler`: `now` and `at`, real heap or the simulator's engine)
and the network model (`Links`: who a request reaches, after how long, whether a node is still
there, what a message costs). The driver owns the rest, so that both run the same dispatch:
a Send becomes a request delivered to the target's core after the model's delay, the answer
goes back into the sender's core the same way, and a message the model loses simply never
arrives: the sender's own request timeout fires, as it does when a real peer hangs. QueryDone
goes to the callback of the query, and every core's next timer is re-armed after each input.

`dispatch` and `answer` are the part the trio adapter (io.py) shares: how the actions of an
input divide into requests and query results, and how a request's outcome goes back in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, Protocol, TypeVar

from overlay.kademlia.core import DhtAction, Kademlia, QueryDone, Send
from overlay.kademlia.wire import Message

N = TypeVar("N", bound=Hashable)  # the caller's handle of a node


def dispatch(actions: Iterable[DhtAction], send: Callable[[Send], None], done: Callable[[QueryDone], None]) -> None:
    """Carry out the actions of one input, in order: requests to `send`, query results to `done`."""
    for action in actions:
        if isinstance(action, Send):
            send(action)
        else:
            done(action)


def answer(
    core: Kademlia, send: Send, response: Message | None, now: float, addrs: tuple[bytes, ...] = (),
    group: str = "", scope: str | None = None,
) -> list[DhtAction]:
    """A request's outcome into the core: a response of the request's type answers it; none, or
    one of another type, is a failure (`addrs`, `group`, `scope`: as `Kademlia.handle_response`)."""
    if response is not None and response.type is send.message.type:
        return core.handle_response(send.request_id, response, now, addrs, group, scope)
    return core.handle_failure(send.request_id, now)


class Scheduler(Protocol):
    now: float

    def at(self, when: float, fn: Callable[[], None]) -> None: ...


class Links(Generic[N]):
    """The network model. Reachability of the target's DHT (known, up, a server) is checked by
    the driver before `request_delay` is asked; the rest is the model's."""

    def core(self, node: N) -> Kademlia:
        raise NotImplementedError

    def resolve(self, peer_id: bytes) -> N | None:
        """The node with this peer ID, up or not (None: nobody)."""
        raise NotImplementedError

    def alive(self, node: N) -> bool:
        raise NotImplementedError

    def request_delay(self, src: N, dst: N, size: int) -> float | None:
        """How long a request takes from src to dst (None: lost, e.g. across a partition)."""
        raise NotImplementedError

    def response_delay(self, dst: N, src: N, size: int) -> float | None:
        """How long dst's answer takes back to src (None: lost)."""
        raise NotImplementedError

    def size(self, message: Message) -> int:
        """What a message costs on the wire (0 when the model does not count bytes)."""
        return 0

    def sent(self, node: N, size: int) -> None:
        """Accounting: `node` sent a message (whether or not it arrives)."""

    def received(self, node: N, size: int) -> None:
        """Accounting: a message arrived at `node`."""


class _Wait:
    __slots__ = ("condition", "then", "settled")

    def __init__(self, condition: Callable[[], bool], then: Callable[[bool], None]) -> None:
        self.condition, self.then, self.settled = condition, then, False


class MemoryDriver(Generic[N]):
    """Every node's core on one clock and one network model. `unclaimed` gets the QueryDone of
    queries started without a callback (refreshes, republishes, or ones the caller tracks itself)."""

    def __init__(
        self, scheduler: Scheduler, links: Links[N], unclaimed: Callable[[N, QueryDone], None] | None = None
    ) -> None:
        self.scheduler = scheduler
        self.links = links
        self.unclaimed = unclaimed
        self._callbacks: dict[tuple[N, int], Callable[[QueryDone], None]] = {}
        self._armed: dict[N, float] = {}  # the time each node's timer is scheduled for
        self._waits: dict[N, list[_Wait]] = {}

    def query(
        self, node: N, start: Callable[[float], tuple[int, list[DhtAction]]], then: Callable[[QueryDone], None]
    ) -> int | None:
        """Start a query (e.g. `lambda now: core.find_node(key, now)`); `then` gets its QueryDone.
        None: the node is down and nothing started."""
        if not self.links.alive(node):
            return None
        query_id, actions = start(self.scheduler.now)
        self._callbacks[(node, query_id)] = then
        self.apply(node, actions)
        return query_id

    def apply(self, node: N, actions: list[DhtAction]) -> None:
        """Carry out what `node`'s core answered to an input; every input's answer passes here."""
        if actions:
            dispatch(actions, lambda send: self._send(node, send), lambda done: self._done(node, done))
        self._arm(node)
        if node in self._waits:
            self._check(node)

    def until(self, node: N, condition: Callable[[], bool], timeout: float, then: Callable[[bool], None]) -> None:
        """`then(True)` once `condition()` holds, checked each time the node's core takes an input
        (the only moments its state changes); `then(False)` if it does not within `timeout`."""
        if condition():
            then(True)
            return
        wait = _Wait(condition, then)
        self._waits.setdefault(node, []).append(wait)
        self.scheduler.at(self.scheduler.now + timeout, lambda: self._expire(node, wait))

    # ---- internals ---------------------------------------------------------------------------

    def _done(self, node: N, done: QueryDone) -> None:
        then = self._callbacks.pop((node, done.query_id), None)
        if then is not None:
            then(done)
        elif self.unclaimed is not None:
            self.unclaimed(node, done)

    def _send(self, src: N, send: Send) -> None:
        links = self.links
        size = links.size(send.message)
        links.sent(src, size)
        dst = links.resolve(send.peer.peer_id)
        if dst is None or not links.alive(dst) or not links.core(dst).server:
            return  # silence: the request times out in the sender's core
        delay = links.request_delay(src, dst, size)
        if delay is not None:
            self.scheduler.at(self.scheduler.now + delay, lambda: self._request(src, dst, send, size))

    def _request(self, src: N, dst: N, send: Send, size: int) -> None:
        links = self.links
        if not links.alive(dst):
            return
        links.received(dst, size)
        response, actions = links.core(dst).handle_request(links.core(src).local, send.message, self.scheduler.now)
        self.apply(dst, actions)
        if response is None or not send.expects_response:
            return
        answer_size = links.size(response)
        links.sent(dst, answer_size)
        delay = links.response_delay(dst, src, answer_size)
        if delay is not None:
            self.scheduler.at(self.scheduler.now + delay, lambda: self._response(src, send, response, answer_size))

    def _response(self, src: N, send: Send, response: Message, size: int) -> None:
        links = self.links
        if links.alive(src):
            links.received(src, size)
            self.apply(src, answer(links.core(src), send, response, self.scheduler.now))

    def _arm(self, node: N) -> None:
        t = self.links.core(node).next_timer()
        if t is not None and t != self._armed.get(node):
            self._armed[node] = t
            self.scheduler.at(t, lambda: self._fire(node, t))

    def _fire(self, node: N, t: float) -> None:
        if self._armed.get(node) != t:
            return  # re-armed for another time since
        del self._armed[node]
        if self.links.alive(node):
            self.apply(node, self.links.core(node).handle_timer(self.scheduler.now))

    def _check(self, node: N) -> None:
        waits = self._waits[node]
        ready = [w for w in waits if w.condition()]
        if not ready:
            return
        waits[:] = [w for w in waits if w not in ready]
        if not waits:
            del self._waits[node]
        for wait in ready:
            wait.settled = True
            wait.then(True)

    def _expire(self, node: N, wait: _Wait) -> None:
        if wait.settled:
            return
        wait.settled = True
        waits = self._waits.get(node, [])
        if wait in waits:
            waits.remove(wait)
            if not waits:
                del self._waits[node]
        wait.then(False)
