"""Where an intra-node message goes next, without I/O: de-duplication, broadcast, per-link queues.

- An envelope is handled once: (source, nonce) pairs seen in the last SEEN_FOR seconds (at most
  MAX_SEEN of them) are dropped and counted as duplicates, which is also what a replayed
  envelope is.
- "*" reaches every node once over the DHT's prefix tree, twice (relay.py chooses where;
  `uncovered`/`cover` remember how much of each tree a broadcast was passed on to here); a
  relay without a DHT floods it to each of its INM neighbours but the one it came from. Only
  control traffic is broadcast; channel messages go to the members (mesh.py).
- A unicast goes straight to its destination, over its link if there is one, else by dialing the
  peer ID (the adapter's job); a node that receives an envelope for someone else forwards it
  only over an existing link, else drops it and counts it.
- `LinkQueue`: what waits to be written to one neighbour, bounded in envelopes and bytes; when
  full, channel messages are dropped (newest first, counted per channel) while control traffic
  gets a reserve of its own, so a slow neighbour cannot stall or bloat anyone else. A batch
  whose write failed is given back, so a reconnecting link sends it first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from overlay.channels.inm import BROADCAST, LEAF, Inm

SEEN_FOR = 600.0
MAX_SEEN = 200_000
MAX_LINKS = 256  # INM links a node keeps (neighbours and the nodes it sends to; as many as its connections); more are refused
LINK_IDLE = 300.0  # seconds after which a link that carried nothing is closed (not a neighbour's, nor a channel member's)
MAX_QUEUE = 10_000  # envelopes per link
MAX_QUEUE_BYTES = 4 * 1024 * 1024  # so all links together hold at most 1 GiB
CONTROL_RESERVE = 1_000  # envelopes beyond MAX_QUEUE kept for commands and responses


@dataclass(frozen=True)
class Route:
    handle: bool  # handle it here
    forward: tuple[str, ...] = ()  # neighbours to pass it to
    dropped: str = ""  # why nothing happens, for the counters


_DUPLICATE = Route(False, dropped="duplicate")  # made once: most envelopes of a broadcast are duplicates
_HERE = Route(True)
_NO_ROUTE = Route(False, dropped="no route")


class InmRouter:
    def __init__(self, me: str) -> None:
        self.me = me
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._covered: dict[tuple[str, str, int], int] = {}  # a broadcast's tree -> the smallest scope passed on here
        self.duplicates = 0
        self.unroutable = 0

    def seen(self, inm: Inm, now: float) -> bool:
        """Record the envelope; True if it was handled before."""
        while self._seen and (len(self._seen) >= MAX_SEEN or next(iter(self._seen.values())) < now - SEEN_FOR):
            source, nonce = self._seen.popitem(last=False)[0]
            self._covered.pop((source, nonce, 0), None)
            self._covered.pop((source, nonce, 1), None)
        key = (inm.source, inm.nonce)
        if key in self._seen:
            return True
        self._seen[key] = now
        return False

    def was_seen(self, inm: Inm) -> bool:
        """Whether the envelope was handled before, without recording it (checked before a
        signature is verified, so that only a verified envelope is ever recorded)."""
        return (inm.source, inm.nonce) in self._seen

    def uncovered(self, inm: Inm, scope: int) -> tuple[int, int] | None:
        """A broadcast over the prefix tree with `scope`: the buckets [from, to) it is still to
        be passed on to from here, or None if a copy with this scope or a smaller one was (each
        bucket gets it once from here, however many copies come)."""
        before = self._covered.get((inm.source, inm.nonce, inm.tree), LEAF + 1)
        return (scope, before) if scope < before else None

    def cover(self, inm: Inm, scope: int, now: float) -> None:
        """Record that the broadcast is passed on from `scope` (after it was verified)."""
        self.seen(inm, now)
        self._covered[(inm.source, inm.nonce, inm.tree)] = scope

    def route(self, inm: Inm, came_from: str | None, neighbours: list[str], now: float) -> Route:
        """For an envelope received from neighbour `came_from` (None: made here)."""
        if came_from is not None and self.seen(inm, now):
            self.duplicates += 1
            return _DUPLICATE
        if came_from is None:
            self.seen(inm, now)  # our own broadcast coming back is a duplicate
        if inm.destination == BROADCAST:
            targets = tuple(n for n in neighbours if n != came_from and n != inm.source)
            return Route(came_from is not None, targets)
        if inm.destination == self.me:
            return _HERE
        if came_from is None or inm.destination in neighbours:
            return Route(False, (inm.destination,))
        self.unroutable += 1
        return _NO_ROUTE


@dataclass
class LinkQueue:
    """Envelopes (already encoded) waiting for one neighbour's writer."""

    items: deque[tuple[bytes, str]] = field(default_factory=deque)  # (frame, channel or "")
    size: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # channel ("" for control) -> count

    def put(self, frame: bytes, channel: str = "") -> bool:
        limit = MAX_QUEUE if channel else MAX_QUEUE + CONTROL_RESERVE
        if len(self.items) >= limit or self.size + len(frame) > MAX_QUEUE_BYTES:
            self.dropped[channel] = self.dropped.get(channel, 0) + 1
            return False
        self.items.append((frame, channel))
        self.size += len(frame)
        return True

    def take(self, max_bytes: int = 256 * 1024) -> list[tuple[bytes, str]]:
        """(frame, channel) pairs to write in one go (at least one if any wait)."""
        out: list[tuple[bytes, str]] = []
        taken = 0
        while self.items and (not out or taken + len(self.items[0][0]) <= max_bytes):
            out.append(self.items.popleft())
            taken += len(out[-1][0])
        self.size -= taken
        return out

    def give_back(self, batch: list[tuple[bytes, str]]) -> None:
        """A taken batch whose write failed goes back to the front, in order, for the next
        stream to the same neighbour: a failed write loses nothing by itself (the link's end
        counts what is still queued then). It may exceed the bounds by that one batch."""
        self.items.extendleft(reversed(batch))
        self.size += sum(len(frame) for frame, _ in batch)

    def __len__(self) -> int:
        return len(self.items)
