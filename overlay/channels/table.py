"""The channel registry of one node, without I/O: reservations, where channels are open, local subscribers.

WSRelay's model: a channel is *open* on a node while the node has subscribed clients, and
*reserved* network-wide from its first subscriber on, with the channel's password hash, so that
every node checks the same password. What WSRelay leaves open, decided here
(docs/protocols/wsrelay.md gives the reasons):

- **Concurrent reservations.** A reservation is (hash, owner node, time it was made); of two
  reservations of one name the one made earlier wins, ties broken by owner name. Every node
  applies the same rule to whatever it hears, in any order, so all end on the same winner. A
  node whose clients subscribed under the losing reservation evicts them (they proved a
  password the network no longer uses).
- **Where channels are open** (interest) is soft state: a node announces each open channel when
  it opens and closes it and every REFRESH seconds, and an announcement not renewed for EXPIRE
  seconds lapses. Announcements carry the reservation, so they also repair reservations that
  diverged during a partition (anti-entropy). Messages go only to nodes where the channel is
  open, never to the whole network.
- **Orphaned reservations** (every node with clients crashed) lapse GRACE seconds after the last
  announcement for them; an explicit unreserve removes them at once.

Times: `now` is a monotonic clock for expiry; reservations carry wall-clock milliseconds (`at`),
the only time nodes compare with each other.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

PBKDF2_ITERATIONS = 32768
MAX_CHANNEL_NAME = 128
MAX_PASSWORD = 1024
REFRESH = 30.0
EXPIRE = 3 * REFRESH + 5
GRACE = 120.0
MAX_CHANNELS = 10_000  # reservations a node keeps; more are refused


def hash_password(channel: str, password: str | None) -> str:
    """PBKDF2-HMAC-SHA256 with the channel name as salt; "" for a channel without password.

    About 15 ms of CPU: callers on the event loop run it in a worker thread.
    """
    if not password:
        return ""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), channel.encode(), PBKDF2_ITERATIONS).hex()


def valid_channel_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= MAX_CHANNEL_NAME and name.isprintable()


def valid_hash(value: object) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) == 64 and all(c in "0123456789abcdef" for c in value)))


@dataclass(frozen=True, order=True)
class Reservation:
    """Ordered by (at, owner): the smaller one wins."""

    at: int  # wall-clock ms at the owner when it reserved
    owner: str
    password: str  # the hash

    def to_json(self, name: str) -> dict:
        return {"channel": name, "password": self.password, "owner": self.owner, "at": self.at}


@dataclass
class _Channel:
    reservation: Reservation
    heard: float  # last time anything renewed the reservation (monotonic)
    open_on: dict[str, float] = field(default_factory=dict)  # node -> announcement expiry
    subscribers: set[object] = field(default_factory=set)  # local clients


@dataclass(frozen=True)
class Change:
    """What a call changed that the adapter must act on."""

    opened: bool = False  # the channel is now open here: announce it
    closed: bool = False  # no local subscriber any more: announce it, maybe unreserve
    reserved: Reservation | None = None  # a reservation made here: announce it
    evicted: frozenset[object] = frozenset()  # local clients whose subscription is void


class ChannelTable:
    def __init__(self, me: str) -> None:
        self.me = me
        self.channels: dict[str, _Channel] = {}
        self.refused = 0  # reservations refused for MAX_CHANNELS

    # ---- local clients ----

    def subscribe(self, client: object, name: str, password_hash: str, now: float, wall_ms: int) -> tuple[str | None, Change]:
        """(failure reason or None, change). The first subscriber anywhere reserves the channel."""
        channel = self.channels.get(name)
        reserved = None
        if channel is None:
            if len(self.channels) >= MAX_CHANNELS:
                self.refused += 1
                return "too many channels", Change()
            reserved = Reservation(wall_ms, self.me, password_hash)
            channel = self.channels[name] = _Channel(reserved, now)
        elif not hmac.compare_digest(channel.reservation.password, password_hash):
            return "invalid password", Change()
        opened = not channel.subscribers
        channel.subscribers.add(client)
        if opened:
            channel.open_on[self.me] = float("inf")
        return None, Change(opened=opened, reserved=reserved)

    def unsubscribe(self, client: object, name: str, now: float) -> tuple[str | None, Change]:
        channel = self.channels.get(name)
        if channel is None or client not in channel.subscribers:
            return "not subscribed", Change()
        channel.subscribers.discard(client)
        if channel.subscribers:
            return None, Change()
        channel.open_on.pop(self.me, None)
        channel.heard = now
        return None, Change(closed=True)

    def drop_client(self, client: object, now: float) -> list[str]:
        """A client went away: the channels it leaves closed here."""
        closed = []
        for name, channel in list(self.channels.items()):
            if client in channel.subscribers and self.unsubscribe(client, name, now)[1].closed:
                closed.append(name)
        return closed

    def subscribed(self, client: object, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and client in channel.subscribers

    def subscribers(self, name: str) -> set[object]:
        channel = self.channels.get(name)
        return channel.subscribers if channel else set()

    # ---- what other nodes say ----

    def reserve(self, name: str, reservation: Reservation, now: float) -> tuple[str | None, Change]:
        """A reservation heard from the network (reserve-channel, an announcement, a listing).

        Returns "channel already reserved" when a different reservation already holds the name
        and keeps it; the same reservation again is accepted (announcements repeat it).
        """
        channel = self.channels.get(name)
        if channel is None:
            if len(self.channels) >= MAX_CHANNELS:
                self.refused += 1
                return "too many channels", Change()
            self.channels[name] = _Channel(reservation, now)
            return None, Change()
        if reservation == channel.reservation:
            channel.heard = now
            return None, Change()
        if channel.reservation < reservation:
            return "channel already reserved", Change()
        evicted = frozenset()
        if reservation.password != channel.reservation.password and channel.subscribers:
            evicted = frozenset(channel.subscribers)
            channel.subscribers.clear()
            channel.open_on.pop(self.me, None)
        channel.reservation, channel.heard = reservation, now
        return None, Change(closed=bool(evicted), evicted=evicted)

    def announce(self, node: str, name: str, reservation: Reservation, is_open: bool, now: float) -> Change:
        """A node says the channel is open (or no longer open) there, under this reservation."""
        _, change = self.reserve(name, reservation, now)
        channel = self.channels.get(name)
        if channel is not None and node != self.me:
            if is_open and channel.reservation.password == reservation.password:
                channel.open_on[node] = now + EXPIRE
            else:
                channel.open_on.pop(node, None)
            channel.heard = now
        return change

    def unreserve(self, name: str, now: float) -> str | None:
        """Another node asks to free the channel: refused while it is open here."""
        channel = self.channels.get(name)
        if channel is None:
            return None
        if channel.subscribers:
            return "channel still open"
        del self.channels[name]
        return None

    def forget_node(self, node: str) -> None:
        """A node left the network (its announcements would lapse anyway)."""
        for channel in self.channels.values():
            channel.open_on.pop(node, None)

    # ---- queries ----

    def open_here(self) -> list[str]:
        return sorted(n for n, c in self.channels.items() if c.subscribers)

    def open_elsewhere(self, name: str) -> list[str]:
        """Nodes the channel's messages go to."""
        channel = self.channels.get(name)
        return sorted(n for n in channel.open_on if n != self.me) if channel else []

    def reservation(self, name: str) -> Reservation | None:
        channel = self.channels.get(name)
        return channel.reservation if channel else None

    def listing(self, open_only: bool) -> list[dict]:
        """list-channels (open here) / list-reserved-channels (all): WSRelay's {name, password},
        plus owner and at so a joining node applies the same conflict rule."""
        return [
            {"name": name, "password": c.reservation.password, "owner": c.reservation.owner, "at": c.reservation.at}
            for name, c in sorted(self.channels.items())
            if c.subscribers or not open_only
        ]

    # ---- time ----

    def expire(self, now: float) -> list[str]:
        """Drop lapsed announcements and orphaned reservations; returns the channels open here,
        which the adapter re-announces (call every REFRESH seconds)."""
        for name, channel in list(self.channels.items()):
            for node, until in list(channel.open_on.items()):
                if until < now:
                    del channel.open_on[node]
            if not channel.open_on and now - channel.heard > GRACE:
                del self.channels[name]
        return self.open_here()
