"""The channel registry of one node, without I/O: local subscribers, the reservation they proved,
and the other member nodes (where the channel is open too), to which its messages go.

A channel on a node is in one of two states (no entry at all: closed here):

    LOOKING  local clients asked to subscribe; the reservation is being looked up in the DHT,
             and they wait for the answer
    OPEN     local subscribers, each of whom proved the password of `reservation`

    closed  --subscribe--------------------------------> LOOKING  (the relay looks the record up)
    LOOKING --found: clients whose password fits-------> OPEN     (answered ok; the relay joins)
    LOOKING --found: none fits, or all left------------> closed   (answered "invalid password")
    OPEN    --subscribe--------------------------------> OPEN     (answered at once)
    OPEN    --last subscriber leaves-------------------> closed   (the relay tells the members)
    OPEN    --checked: another reservation won---------> closed   (the subscribers are evicted)

Reservations live in the DHT (reservation.py); members find each other there (provider records)
and by joining each other (relay.py). Only an OPEN channel has members: a node where a channel is
closed keeps nothing of it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum

from overlay.channels.reservation import Reservation
from overlay.channels.sealing import ChannelSecret

MAX_CHANNEL_NAME = 128
MAX_PASSWORD = 1024
MAX_CHANNELS = 10_000  # channels open or looked up on a node; more are refused
MAX_WAITING = 256  # clients waiting for one channel's lookup
MAX_MEMBERS = 1_000  # other member nodes known per channel; joins beyond are refused


class ChannelState(Enum):
    LOOKING = "looking"
    OPEN = "open"


def valid_channel_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= MAX_CHANNEL_NAME and name.isprintable()


@dataclass
class _Channel:
    reservation: Reservation | None = None  # the one the subscribers proved (OPEN)
    secret: ChannelSecret | None = None  # their verifier and message key
    members: dict[str, None] = field(default_factory=dict)  # the other nodes where it is open (ordered)
    subscribers: set[object] = field(default_factory=set)  # local clients
    waiting: dict[object, tuple[str, ChannelSecret]] = field(default_factory=dict)  # client -> (nonce, secret)

    @property
    def state(self) -> ChannelState:
        return ChannelState.OPEN if self.subscribers else ChannelState.LOOKING


@dataclass(frozen=True)
class Change:
    """What a call changed that the relay must act on."""

    opened: bool = False  # the channel is now open here: join its members
    closed: bool = False  # no local subscriber any more: leave its members, maybe release it
    look: bool = False  # look the reservation up (the first client of a LOOKING channel)
    answers: tuple[tuple[object, str, str | None], ...] = ()  # (client, nonce, failure or None)
    evicted: frozenset[object] = frozenset()  # local clients whose subscription is void


class ChannelTable:
    def __init__(self, me: str) -> None:
        self.me = me
        self.channels: dict[str, _Channel] = {}
        self.refused = 0  # channels refused for MAX_CHANNELS

    def _entry(self, name: str) -> _Channel | None:
        channel = self.channels.get(name)
        if channel is None:
            if len(self.channels) >= MAX_CHANNELS:
                self.refused += 1
                return None
            channel = self.channels[name] = _Channel()
        return channel

    # ---- local clients ----

    def subscribe(self, client: object, name: str, secret: ChannelSecret, nonce: str) -> Change:
        channel = self._entry(name)
        if channel is None:
            return Change(answers=((client, nonce, "too many channels"),))
        if channel.state is ChannelState.OPEN:
            assert channel.reservation is not None
            if not hmac.compare_digest(channel.reservation.verifier, secret.verifier):
                return Change(answers=((client, nonce, "invalid password"),))
            channel.subscribers.add(client)
            return Change(answers=((client, nonce, None),))
        if len(channel.waiting) >= MAX_WAITING:
            return Change(answers=((client, nonce, "busy"),))
        look = not channel.waiting
        channel.waiting[client] = (nonce, secret)
        return Change(look=look)

    def first_waiting(self, name: str) -> ChannelSecret | None:
        """The secret of the first client waiting for `name` (who reserves it if nobody has)."""
        channel = self.channels.get(name)
        return next(iter(channel.waiting.values()))[1] if channel and channel.waiting else None

    def found(self, name: str, reservation: Reservation) -> Change:
        """The lookup's answer: the waiting clients whose password fits subscribe."""
        channel = self.channels.get(name)
        if channel is None or channel.state is not ChannelState.LOOKING:
            return Change()
        answers = []
        for client, (nonce, secret) in channel.waiting.items():
            fits = hmac.compare_digest(reservation.verifier, secret.verifier)
            if fits:
                channel.subscribers.add(client)
                channel.secret = secret
            answers.append((client, nonce, None if fits else "invalid password"))
        channel.waiting.clear()
        if channel.subscribers:
            channel.reservation = reservation
        else:
            del self.channels[name]
        return Change(opened=bool(channel.subscribers), answers=tuple(answers))

    def checked(self, name: str, winner: Reservation) -> Change:
        """The DHT's reservation, looked up again while open: the same password keeps the
        subscribers (the record is adopted), another evicts them."""
        channel = self.channels.get(name)
        if channel is None or channel.state is not ChannelState.OPEN or channel.reservation == winner:
            return Change()
        if channel.reservation is not None and hmac.compare_digest(channel.reservation.verifier, winner.verifier):
            channel.reservation = winner
            return Change()
        evicted = frozenset(channel.subscribers)
        channel.subscribers.clear()
        channel.reservation = None
        return Change(closed=True, evicted=evicted)

    def readopt(self, name: str, reservation: Reservation) -> None:
        """Our own new reservation of a channel open here (the old one lapsed or was released)."""
        channel = self.channels.get(name)
        if channel is not None and channel.state is ChannelState.OPEN:
            channel.reservation = reservation

    def unsubscribe(self, client: object, name: str) -> tuple[str | None, Change]:
        channel = self.channels.get(name)
        if channel is None or client not in channel.subscribers:
            if channel is not None and channel.waiting.pop(client, None) is not None:
                if channel.state is ChannelState.LOOKING and not channel.waiting:
                    del self.channels[name]
                return None, Change()
            return "not subscribed", Change()
        channel.subscribers.discard(client)
        if channel.subscribers:
            return None, Change()
        return None, Change(closed=True)

    def closed(self, name: str) -> tuple[Reservation | None, list[str]]:
        """After the last subscriber left or was evicted: forget the channel; returns the
        reservation they had proved and the members (to tell them)."""
        channel = self.channels.get(name)
        if channel is None or channel.subscribers:
            return None, []
        if channel.waiting:  # clients subscribing anew wait for a lookup of their own
            reservation, members = channel.reservation, list(channel.members)
            channel.reservation, channel.secret, channel.members = None, None, {}
            return reservation, members
        del self.channels[name]
        return channel.reservation, list(channel.members)

    def drop_client(self, client: object) -> list[str]:
        """A client went away: the channels it leaves closed here."""
        closed = []
        for name in list(self.channels):
            if self.unsubscribe(client, name)[1].closed:
                closed.append(name)
        return closed

    def subscribed(self, client: object, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and client in channel.subscribers

    def subscribers(self, name: str) -> set[object]:
        channel = self.channels.get(name)
        return channel.subscribers if channel else set()

    # ---- members ----

    def add_member(self, name: str, node: str) -> bool:
        """A node where the channel is open too (it joined us, or answered our join). Only an
        open channel has members; at most MAX_MEMBERS. Whether it was added."""
        channel = self.channels.get(name)
        if channel is None or channel.state is not ChannelState.OPEN or node == self.me:
            return False
        if node not in channel.members and len(channel.members) >= MAX_MEMBERS:
            return False
        channel.members[node] = None
        return True

    def remove_member(self, name: str, node: str) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.members.pop(node, None)

    def forget_node(self, node: str) -> None:
        """A node is gone (its link was given up): it is no member anywhere."""
        for channel in self.channels.values():
            channel.members.pop(node, None)

    # ---- queries ----

    def open_here(self) -> list[str]:
        return sorted(n for n, c in self.channels.items() if c.subscribers)

    def is_member(self, name: str, node: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and node in channel.members

    def member_anywhere(self, node: str) -> bool:
        """Whether `node` is a member of a channel open here (its link then stays open)."""
        return any(node in channel.members for channel in self.channels.values())

    def members(self, name: str) -> list[str]:
        """The other nodes where the channel is open: its messages go to them."""
        channel = self.channels.get(name)
        return list(channel.members) if channel else []

    def reservation(self, name: str) -> Reservation | None:
        channel = self.channels.get(name)
        return channel.reservation if channel else None

    def secret(self, name: str) -> ChannelSecret | None:
        """The open channel's verifier and key (None: not open here)."""
        channel = self.channels.get(name)
        return channel.secret if channel and channel.subscribers else None

    def listing(self) -> list[dict]:
        """list-channels: the channels open here, with the signed reservation their clients
        proved (a verifier, never anything that opens a message)."""
        return [{"name": name, **c.reservation.to_json()} for name, c in sorted(self.channels.items())
                if c.subscribers and c.reservation is not None]
