"""How a channel's messages travel among its member nodes, without I/O: direct fan-out for small
channels, a mesh of bounded degree (gossipsub's) for large ones, and per-publisher order and
once-only delivery of what comes in, with repair from digests.

Small channel (this node knows at most DIRECT_MAX other members): the publisher's node sends each
message to every member itself, one envelope encoded once; nobody passes it on. Large channel:
each member keeps a few mesh peers among the members (D_LO..D_HI, aiming at D), the publisher's
node signs each message and sends it to its mesh peers (and, to shorten the paths, to up to
FANOUT other members), and each member passes what it accepts to its mesh peers but the one it
came from. While a large channel's publisher has a link up to each of at most LINKED_MAX other
members (a busy channel of a few dozen), it sends them its message as a small channel's, unsigned
and to each: with the mesh it would send to up to that many anyway, and no member checks a
signature or passes a copy on. A channel is large on a node once it knows more than DIRECT_MAX
members or another member says so (in a join's answer, or by grafting it); it stays large while
open.

Mesh peer states (per channel; a peer is a member node):

    -         --graft sent (heartbeat: below D_LO), or graft accepted (below D_HI)--> GRAFTED
    GRAFTED   --prune sent (heartbeat: above D_HI) or received, leave, link gone----> -
    a peer that pruned us, or that we pruned, is not grafted for PRUNE_BACKOFF seconds;
    a graft beyond D_HI is answered with a prune

Per publisher (its node is the *origin*): every message carries the origin's (epoch, seq) — the
epoch is when the channel opened on the origin (ms), seq counts from 1 — and a receiver keeps the
next seq it expects:

    seq < next, or buffered            duplicate: dropped (before any signature is checked)
    seq == next                        delivered, with what it unblocks in the buffer
    next < seq <= next + REORDER_MAX   buffered: a gap is open
    beyond that, or buffers full       the gap is given up at once
    newer epoch                        the origin started anew: its state restarts there
    older epoch                        dropped
    the origin's position (`start`)    its state starts after it: the origin told us, joining
                                       us or answering our join, the [epoch, seq] it is at
    first message of an origin         its state starts there (no history is fetched), unless
    not told of                        the origin's epoch began after the channel opened here:
                                       then at seq 1 (all of that epoch is ours; what overtook
                                       the first ones waits behind a gap)

A gap: OPEN (GAP_WAIT seconds for the missing ones to arrive by another path) -> ASKED (the node
that passed the later message is asked for them: channel-iwant; GAP_GIVEUP seconds) -> closed
(they came, or given up: what is buffered is delivered, the missing are counted lost).

Repair from digests: a heartbeat after which a node accepted messages of a large channel sends
its mesh peers a digest (channel-ihave: per origin, epoch and last seq); a peer missing some asks
for them (channel-iwant) and is sent the cached envelopes (CACHE_FOR seconds; bounded in count
and bytes over all channels). An idle channel sends nothing: no heartbeat is due while nothing
changed.

Events: open / close / mark_large / member_added / remove / forget, stamp (our next message),
duplicate / accept / remember (a message), on_graft / on_prune / on_ihave / on_iwant (control),
tick (heartbeats and gaps, when next_timer says). Actions: Control (a mesh command to a member),
Resend (a cached envelope to a member), Release (messages a closed gap lets through, in order).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

D, D_LO, D_HI = 6, 4, 12
DIRECT_MAX = 8  # other members up to which a publisher sends every message itself (by simulation: docs/benchmarks.md)
FANOUT = 16  # members beyond its mesh peers a large channel's publisher sends its own messages to
LINKED_MAX = D_HI + FANOUT  # other members a large channel's publisher sends to directly while linked to each
KNOW_ENOUGH = 64  # members known beyond which a node joins no more of those answers name
HEARTBEAT = 1.0
GAP_WAIT = 0.15
GAP_GIVEUP = 1.0
REORDER_MAX = 128  # messages buffered per origin behind a gap
MAX_BUFFERED = 4_096  # ... and over all channels and origins
MAX_ORIGINS = 1_024  # publishers remembered per channel
ORIGIN_IDLE = 300.0  # an origin unheard of this long is forgotten (longer than a signed message is accepted)
PRUNE_BACKOFF = 60.0
CACHE_FOR = 10.0
CACHE_MAX = 16_384  # envelopes kept for repair, over all channels
CACHE_BYTES = 32 * 1024 * 1024
MAX_DIGEST = 64  # origins in one digest, and messages asked for in one iwant
GRAFT, PRUNE, IHAVE, IWANT = "channel-graft", "channel-prune", "channel-ihave", "channel-iwant"
COMMANDS = frozenset({GRAFT, PRUNE, IHAVE, IWANT})


class Control(NamedTuple):
    peer: str
    data: dict


class Resend(NamedTuple):
    peer: str
    envelope: Any


class Release(NamedTuple):
    channel: str
    payloads: list


MeshAction = Control | Resend | Release
Id = tuple[str, int, int]  # (origin, epoch, seq)


@dataclass
class _Origin:
    epoch: int
    next: int
    heard: float
    buffer: dict[int, Any] = field(default_factory=dict)
    gap_at: float | None = None  # when the open gap is next looked at
    asked: bool = False
    via: str = ""  # who passed the last buffered message (asked for the missing ones)


@dataclass
class _Channel:
    epoch: int
    seq: int = 0
    large: bool = False
    peers: set[str] = field(default_factory=set)
    fanout: list[str] = field(default_factory=list)  # the other members our own messages also go to
    backoff: dict[str, float] = field(default_factory=dict)
    origins: dict[str, _Origin] = field(default_factory=dict)
    fresh: bool = False  # accepted messages since the last digest
    due: float | None = None  # the next heartbeat


def _ids(value: object) -> list[Id]:
    """A digest's or iwant's [[origin, epoch, seq], ...], checked and bounded."""
    if not isinstance(value, list):
        raise ValueError("expected a list")
    out = []
    for item in value[:MAX_DIGEST]:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or not all(type(n) is int and 0 <= n < 2**63 for n in item[1:])):
            raise ValueError("expected [origin, epoch, seq]")
        out.append((item[0], item[1], item[2]))
    return out


class ChannelMesh:
    def __init__(self, me: str, rng: random.Random, count: Callable[[str], None]) -> None:
        """`count(reason)` counts what is dropped (duplicates, lost, refused)."""
        self.me = me
        self.rng = rng
        self.count = count
        self.channels: dict[str, _Channel] = {}
        self._cache: OrderedDict[tuple[str, str, int, int], tuple[Any, int, float]] = OrderedDict()
        self._cache_bytes = 0
        self._buffered = 0
        self.rescheduled = False  # a timer was set since the adapter last looked (it may sleep longer)

    # ---- channels and peers ----

    def open(self, name: str, epoch: int) -> None:
        self.channels[name] = _Channel(epoch)

    def close(self, name: str) -> None:
        channel = self.channels.pop(name, None)
        if channel is not None:
            self._buffered -= sum(len(o.buffer) for o in channel.origins.values())

    def large(self, name: str) -> bool:
        channel = self.channels.get(name)
        return channel is not None and channel.large

    def mark_large(self, name: str, now: float) -> None:
        channel = self.channels.get(name)
        if channel is not None and not channel.large:
            channel.large = True
            self._due(channel, now)

    def member_added(self, name: str, members: int, now: float) -> None:
        """A member was added (`members` known now): the channel may have become large, or a
        mesh short of peers may graft it."""
        channel = self.channels.get(name)
        if channel is None:
            return
        if members > DIRECT_MAX:
            self.mark_large(name, now)
        elif channel.large and len(channel.peers) < D_LO:
            self._due(channel, now)

    def remove(self, name: str, peer: str, now: float) -> None:
        channel = self.channels.get(name)
        if channel is not None and peer in channel.peers:
            channel.peers.discard(peer)
            self._due(channel, now)

    def forget(self, peer: str, now: float) -> None:
        for name in self.channels:
            self.remove(name, peer, now)

    def peers(self, name: str) -> set[str]:
        channel = self.channels.get(name)
        return channel.peers if channel else set()

    def targets(self, name: str, came_from: str, origin: str) -> tuple[str, ...]:
        """Where an accepted message of a large channel goes on."""
        return tuple(p for p in self.peers(name) if p != came_from and p != origin)

    def publish_targets(self, name: str, members: list[str]) -> tuple[str, ...]:
        """Where our own message of a large channel goes: our mesh peers and FANOUT other
        members (fewer hops for many), the same ones while they stay members, so the links
        this needs stay few."""
        channel = self.channels[name]
        known = set(members)
        fanout = [m for m in channel.fanout if m in known and m not in channel.peers]
        if len(fanout) < FANOUT:
            others = [m for m in members if m not in channel.peers and m not in fanout]
            fanout += self.rng.sample(others, min(FANOUT - len(fanout), len(others)))
        channel.fanout = fanout
        return (*channel.peers, *fanout)

    def _due(self, channel: _Channel, now: float) -> None:
        if channel.due is None:
            channel.due = now + HEARTBEAT
            self.rescheduled = True

    # ---- messages ----

    def stamp(self, name: str, now: float) -> tuple[int, int]:
        """(epoch, seq) of our next message of the channel."""
        channel = self.channels[name]
        channel.seq += 1
        if channel.large:
            channel.fresh = True
            self._due(channel, now)
        return channel.epoch, channel.seq

    def position(self, name: str) -> list[int]:
        """[epoch, seq] of the last message we stamped for the channel, told to members we join
        and who join us, so that they expect what follows (`start`)."""
        channel = self.channels[name]
        return [channel.epoch, channel.seq]

    def start(self, name: str, origin: str, position: object, now: float) -> None:
        """An origin's own word, on its own stream (its join, or its answer to ours), of where its
        messages stand: all after them are ours, whatever order their copies come in. A position
        is a claim about the origin's own messages only: a lie can only hold up or drop those."""
        channel = self.channels.get(name)
        if channel is None or not (isinstance(position, list) and len(position) == 2
                                   and all(type(v) is int and 0 <= v < 2**63 for v in position)):
            return
        epoch, last = position
        state = channel.origins.get(origin)
        if state is None and len(channel.origins) >= MAX_ORIGINS:
            return
        if state is None or epoch > state.epoch:
            self._begin(channel, origin, epoch, last + 1, now)

    def _begin(self, channel: _Channel, origin: str, epoch: int, next_seq: int, now: float) -> _Origin:
        """A new state for the origin (its first epoch heard of, or a newer one)."""
        old = channel.origins.get(origin)
        if old is not None:
            self._buffered -= len(old.buffer)
        state = channel.origins[origin] = _Origin(epoch, next_seq, now)
        return state

    def duplicate(self, name: str, origin: str, epoch: int, seq: int) -> bool:
        """Whether a message was accepted before, or is older than what we accept."""
        channel = self.channels.get(name)
        state = channel.origins.get(origin) if channel else None
        if state is None:
            return False
        return epoch < state.epoch or (epoch == state.epoch and (seq < state.next or seq in state.buffer))

    def accept(self, name: str, origin: str, epoch: int, seq: int, payload: Any, via: str, now: float) -> list:
        """A new, authentic message: the payloads now deliverable, in order (this one, and
        what it unblocks; [] while it waits behind a gap)."""
        channel = self.channels[name]
        if channel.large:
            channel.fresh = True
            self._due(channel, now)
        state = channel.origins.get(origin)
        if state is None or epoch > state.epoch:
            if state is None and len(channel.origins) >= MAX_ORIGINS:
                channel.origins = {o: s for o, s in channel.origins.items() if s.heard > now - ORIGIN_IDLE}
                if len(channel.origins) >= MAX_ORIGINS:
                    self.count("publishers full")
                    return []
            # An origin whose epoch began after the channel opened here has every message of it
            # for us: expect it from seq 1, so that a copy overtaking the first ones (over the
            # mesh, while the origin's own link to us redials) opens a gap rather than making
            # them look old. One that began before (we joined late) starts where we first hear it.
            state = self._begin(channel, origin, epoch, 1 if epoch > channel.epoch else seq, now)
        state.heard = now
        if seq == state.next:
            state.next += 1
            return [payload, *self._unblock(state)]
        if seq - state.next > REORDER_MAX or self._buffered >= MAX_BUFFERED:
            return self._give_up(state, extra=(seq, payload))
        state.buffer[seq] = payload
        self._buffered += 1
        state.via = via
        if state.gap_at is None:
            state.gap_at, state.asked = now + GAP_WAIT, False
            self.rescheduled = True
        return []

    def _unblock(self, state: _Origin) -> list:
        out = []
        while state.next in state.buffer:
            out.append(state.buffer.pop(state.next))
            self._buffered -= 1
            state.next += 1
        if not state.buffer:
            state.gap_at = None
        return out

    def _give_up(self, state: _Origin, extra: tuple[int, Any] | None = None) -> list:
        """Skip the missing messages: deliver what is buffered (and `extra`) in order."""
        buffered = dict(state.buffer)
        if extra is not None:
            buffered[extra[0]] = extra[1]
        self._buffered -= len(state.buffer)
        state.buffer, state.gap_at = {}, None
        out = []
        for seq in sorted(buffered):
            for _ in range(seq - state.next):
                self.count("lost")
            out.append(buffered[seq])
            state.next = seq + 1
        return out

    def remember(self, name: str, origin: str, epoch: int, seq: int, envelope: Any, size: int, now: float) -> None:
        """Keep an envelope for repair (CACHE_FOR seconds, within the global bounds)."""
        self._expire_cache(now)
        while self._cache and (len(self._cache) >= CACHE_MAX or self._cache_bytes + size > CACHE_BYTES):
            self._cache_bytes -= self._cache.popitem(last=False)[1][1]
        self._cache[(name, origin, epoch, seq)] = (envelope, size, now)
        self._cache_bytes += size

    def _expire_cache(self, now: float) -> None:
        while self._cache and next(iter(self._cache.values()))[2] < now - CACHE_FOR:
            self._cache_bytes -= self._cache.popitem(last=False)[1][1]

    # ---- control ----

    def on_graft(self, name: str, peer: str, member: bool, now: float) -> list[MeshAction]:
        channel = self.channels.get(name)
        if channel is None or not member:
            return [Control(peer, {"command": PRUNE, "channel": name})]
        self.mark_large(name, now)
        if peer not in channel.peers and len(channel.peers) >= D_HI:
            return [Control(peer, {"command": PRUNE, "channel": name})]
        channel.peers.add(peer)
        return []

    def on_prune(self, name: str, peer: str, now: float) -> None:
        channel = self.channels.get(name)
        if channel is not None:
            channel.backoff[peer] = now + PRUNE_BACKOFF
            self.remove(name, peer, now)

    def on_ihave(self, name: str, peer: str, have: object, now: float) -> list[MeshAction]:
        """A mesh peer's digest: ask it for what we miss of origins we follow."""
        channel = self.channels.get(name)
        if channel is None:
            return []
        want: list[list] = []
        for origin, epoch, last in _ids(have):
            state = channel.origins.get(origin)
            if state is None or state.epoch != epoch or origin == self.me:
                continue
            missing = range(state.next, min(last + 1, state.next + MAX_DIGEST))
            want += [[origin, epoch, s] for s in missing if s not in state.buffer]
        if not want:
            return []
        return [Control(peer, {"command": IWANT, "channel": name, "want": want[:MAX_DIGEST]})]

    def on_iwant(self, name: str, peer: str, want: object, now: float) -> list[MeshAction]:
        if name not in self.channels:
            return []
        self._expire_cache(now)
        out: list[MeshAction] = []
        for origin, epoch, seq in _ids(want):
            cached = self._cache.get((name, origin, epoch, seq))
            if cached is None:
                self.count("repair missed")
            else:
                out.append(Resend(peer, cached[0]))
        return out

    # ---- time ----

    def next_timer(self) -> float | None:
        times = [c.due for c in self.channels.values() if c.due is not None]
        times += [o.gap_at for c in self.channels.values() for o in c.origins.values() if o.gap_at is not None]
        return min(times, default=None)

    def tick(self, now: float, members: Callable[[str], list[str]]) -> list[MeshAction]:
        out: list[MeshAction] = []
        for name, channel in self.channels.items():
            for origin, state in channel.origins.items():
                if state.gap_at is None or state.gap_at > now:
                    continue
                if not state.asked and state.via:
                    want = [[origin, state.epoch, s] for s in range(state.next, state.next + MAX_DIGEST)
                            if s not in state.buffer and s < max(state.buffer)]
                    out.append(Control(state.via, {"command": IWANT, "channel": name, "want": want}))
                    state.asked, state.gap_at = True, now + GAP_GIVEUP
                else:
                    released = self._give_up(state)
                    if released:
                        out.append(Release(name, released))
            if channel.due is not None and channel.due <= now:
                channel.due = None
                out += self._heartbeat(name, channel, members(name), now)
        return out

    def _heartbeat(self, name: str, channel: _Channel, members: list[str], now: float) -> list[MeshAction]:
        """Keep the mesh's degree within bounds; send the digest of what came since the last."""
        if not channel.large:
            return []
        known = set(members)
        channel.peers &= known
        channel.backoff = {p: t for p, t in channel.backoff.items() if t > now and p in known}
        out: list[MeshAction] = []
        if len(channel.peers) < D_LO:
            candidates = [m for m in members if m not in channel.peers and m not in channel.backoff]
            for peer in self.rng.sample(candidates, min(D - len(channel.peers), len(candidates))):
                channel.peers.add(peer)
                out.append(Control(peer, {"command": GRAFT, "channel": name}))
        elif len(channel.peers) > D_HI:
            for peer in self.rng.sample(sorted(channel.peers), len(channel.peers) - D):
                channel.peers.discard(peer)
                channel.backoff[peer] = now + PRUNE_BACKOFF
                out.append(Control(peer, {"command": PRUNE, "channel": name}))
        if channel.fresh:
            channel.fresh = False
            recent = sorted(channel.origins.items(), key=lambda item: -item[1].heard)[:MAX_DIGEST - 1]
            have = [[o, s.epoch, max([s.next - 1, *s.buffer])] for o, s in recent]
            if channel.seq:
                have.append([self.me, channel.epoch, channel.seq])
            out += [Control(peer, {"command": IHAVE, "channel": name, "have": have}) for peer in channel.peers]
            self._due(channel, now)  # one more, in case more comes; an idle channel then stops
        return out
