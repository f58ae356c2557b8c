"""Dial a peer by its addresses: the strategy (pure) and its trio adapter.

HOPR-style delivery (docs/protocols/hopr.md): a node's record bundles several addresses; to
reach it, try them in turn until one connects. We try the address that worked last time first,
then the others in the record's order, starting the next attempt when the previous one fails or
after a short stagger (happy-eyeballs style, RFC 8305), and keep the first connection that
completes. One dial per peer is in flight at a time; concurrent callers share it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import multiaddr
import trio
from libp2p.connection_types import ConnectionType
from libp2p.host.basic_host import BasicHost
from libp2p.peer.id import ID

from overlay.core.addrs import plan_dial, strip_p2p
from overlay.core.errors import DialError, SelfDialError

log = logging.getLogger(__name__)

STAGGER = 0.1
DROP_TIMEOUT = 5.0
MAX_CACHED = 4096


def known_addrs(host: BasicHost, peer_id: ID) -> list[multiaddr.Multiaddr]:
    """A peer's addresses from the peerstore, less unspecified ones: identify passes on a peer's
    0.0.0.0 listen address, which from here would mean ourselves."""
    try:
        addrs = [strip_p2p(a) for a in host.get_peerstore().addrs(peer_id)]
    except Exception:  # noqa: BLE001 - the peerstore raises when it knows no address yet
        return []
    return [a for a in addrs if str(a).split("/")[2:3] not in (["0.0.0.0"], ["::"])]


@dataclass
class DialStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    dropped: int = 0  # connections closed because they stopped carrying (`Dialer.drop`)


class Dialer:
    def __init__(self, host: BasicHost, stagger: float = STAGGER) -> None:
        self.host = host
        self.stagger = stagger
        self.stats = DialStats()
        self._last_good: OrderedDict[ID, multiaddr.Multiaddr] = OrderedDict()
        self._inflight: dict[ID, trio.Event] = {}

    def connected(self, peer_id: ID, direct_only: bool = False) -> bool:
        conns = self.host.get_network().get_connections(peer_id)
        return any(not direct_only or c.get_connection_type() is not ConnectionType.RELAYED for c in conns)

    async def drop(self, peer_id: ID, why: str) -> None:
        """Close every connection to `peer_id` because one stopped carrying (a ping or a request
        on it timed out): when a home router reboots or its WAN address changes, it forgets the
        flow and TCP would keep retrying for minutes while `connect` still finds it connected.
        Closed, the next `connect` dials afresh."""
        if not self.connected(peer_id):
            return
        log.info("closing the connection to %s: %s", peer_id, why)
        self.stats.dropped += 1
        with trio.move_on_after(DROP_TIMEOUT):
            await self.host.disconnect(peer_id)

    async def connect(
        self, peer_id: ID, addrs: Sequence[multiaddr.Multiaddr], timeout: float = 10.0, direct_only: bool = False
    ) -> multiaddr.Multiaddr | None:
        """Ensure a connection to `peer_id`; returns the address that connected (None: already was).

        `direct_only`: a relayed connection does not count, dial anyway. Raises DialError naming
        each address's failure; SelfDialError for our own peer ID (whatever addresses a record
        or a caller gives for it).
        """
        if peer_id == self.host.get_id():
            raise SelfDialError(f"{peer_id} is this node's own peer ID")
        if self.connected(peer_id, direct_only):
            return None
        while peer_id in self._inflight:
            await self._inflight[peer_id].wait()
            if self.connected(peer_id, direct_only):
                return None
        done = self._inflight[peer_id] = trio.Event()
        try:
            with trio.move_on_after(timeout):
                return await self._race(peer_id, plan_dial(addrs, self._last_good.get(peer_id)))
            raise DialError(f"dial {peer_id}: timed out after {timeout:.1f}s")
        finally:
            del self._inflight[peer_id]
            done.set()

    async def _race(self, peer_id: ID, plan: list[multiaddr.Multiaddr]) -> multiaddr.Multiaddr:
        if not plan:
            self.stats.failures += 1
            raise DialError(f"dial {peer_id}: no dialable address")
        errors: dict[str, str] = {}
        winner: list[multiaddr.Multiaddr] = []
        network = self.host.get_network()

        async def attempt(addr: multiaddr.Multiaddr, failed: trio.Event) -> None:
            self.stats.attempts += 1
            try:
                await network.dial_addr(addr, peer_id)
            except Exception as e:  # the swarm raises many types; each is one address's failure
                errors[str(addr)] = f"{type(e).__name__}: {e}".strip(": ")
                failed.set()
                return
            winner.append(addr)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for addr in plan:
                failed = trio.Event()
                nursery.start_soon(attempt, addr, failed)
                with trio.move_on_after(self.stagger):
                    await failed.wait()
        if not winner:
            self.stats.failures += 1
            detail = "; ".join(f"{a}: {e}" for a, e in errors.items())
            raise DialError(f"dial {peer_id}: every address failed ({detail})")
        self.stats.successes += 1
        self._last_good[peer_id] = winner[0]
        self._last_good.move_to_end(peer_id)
        while len(self._last_good) > MAX_CACHED:
            self._last_good.popitem(last=False)
        return winner[0]
