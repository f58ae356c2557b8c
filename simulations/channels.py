"""The channel relay (WSRelay) in the simulator: each node runs the node's own relay core
(`overlay/channels/relay.py`: commands, onboarding, reservations, membership, channel messages), and this
module only carries its envelopes over simulated links, as the node's adapter carries them over
INM streams.

- Every node keeps up to `inm_peers` neighbours (links both ways), replaced when one leaves; a
  new link is `link_up` on both sides, which onboards with list-channels.
- Envelopes to a neighbour take the one-way delay; a unicast to another node (a channel message,
  a command's response) is sent straight to it, paying a connection setup first (and, behind
  NAT, a relayed dial) when the two are not connected. The node would make that node a
  neighbour too (up to its `max_links`); the simulator keeps the neighbour graph at `inm_peers`.
- Subscriptions, publishes and the relay's own timer (`next_timer`) are its events; its DHT
  lookups, puts and provider records (reservations, members) run on the node's own Kademlia core
  over the simulated links.
- An envelope to a node that left is lost; its sender gives the link up LOSS_DETECTION seconds
  later (`link_gone`), as the node's link writer does after its retries.
What is measured: for each message, the subscribers online when it was sent, and which of them
got it, when, and whether within twice the publisher-to-subscriber round trip plus 100 ms; the
envelopes sent, by kind; and channel messages that reached a node without the channel open.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from overlay.channels.inm import Inm
from collections import Counter

from overlay.channels.relay import (Answer, ChannelRelay, Deliver, DhtGet, DhtPut, FindProviders, Provide, RelayAction,
                                    SendEnvelope, Unprovide)
from overlay.channels.reservation import Reservation
from overlay.channels.router import LINK_IDLE, MAX_LINKS
from overlay.channels.sealing import PUBLIC
from overlay.core.errors import RecordError
from overlay.core.records import peer_id_to_str

if TYPE_CHECKING:
    from overlay.kademlia.core import Kademlia
    from simulations.network import SimNode, Simulation

RELAYED_DIAL_RTTS = 4  # lookup and relay setup before a first unicast to a node behind NAT
CONTROL_BYTES = 200  # an envelope's size on the wire, for the link model
MESSAGE_BYTES = 300
LOSS_DETECTION = 15.0  # seconds until a sender gives up the link to a node that left


def _modelled_signature(inm: Inm) -> str:
    return "modelled"


def _honest(signed: object) -> bool:
    """Simulated nodes are honest: every signed envelope and reservation is authentic. The
    rules around signatures (who must sign, skew, replay, first come) run as on the node; the
    Ed25519 work itself is not modelled (its cost is the node's, in benchmarks)."""
    return True


def _tree(core: Kademlia, scope: int, per_bucket: int) -> list[tuple[int, list[str]]]:
    """The node's DHT routing table as the relay's broadcast tree (DhtService.tree)."""
    return [(i, [peer_id_to_str(p) for p in peers]) for i, peers in core.table.tree(scope, per_bucket)]


def _modelled_reservation(r: Reservation) -> Reservation:
    return replace(r, sig="modelled")


class ChannelWorkload:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.names = [f"channel-{i}" for i in range(sim.scenario.channels)]
        self.relays: dict[int, ChannelRelay] = {}
        self.links: dict[int, set[int]] = {}
        self.subscribers: dict[str, set[tuple[int, int]]] = {name: set() for name in self.names}  # (node, client)
        self.messages: list[dict] = []
        self._sent: dict[str, tuple[dict, float]] = {}  # message nonce -> (entry, sent at)
        self._clients = itertools.count()
        self._nonces = itertools.count()
        self._subscribing: dict[int, str] = {}  # client -> channel, until answered
        self._timers: dict[int, float] = {}  # node -> when its relay's timer is scheduled
        self._detecting: set[tuple[int, int]] = set()  # (sender, gone node) links being given up
        self.envelopes: Counter[str] = Counter()  # envelopes sent, by kind (message, or the command)
        self.non_member_messages = 0  # channel messages that reached a node where the channel was not open
        self._used: dict[int, dict[int, float]] = {}  # node -> the nodes it has a link with besides neighbours -> last use
        self.no_link = 0  # envelopes dropped: no room for a new link at either end
        self.links_closed = 0  # links closed to make room for another

    def _wall_ms(self) -> int:
        return int(self.sim.sched.now * 1000)

    # ---- nodes ----

    def joined(self, node: SimNode) -> None:
        self.relays[node.index] = ChannelRelay(node.name, self._wall_ms, _modelled_signature, _honest,
                                               _modelled_reservation, _honest,
                                               rng=random.Random(self.sim.rng.getrandbits(64)),
                                               tree=partial(_tree, node.core), serving=lambda: node.core.server,
                                               linked=partial(self._has_link, node))
        self.links[node.index] = set()
        self._fill_links(node)

    def left(self, node: SimNode) -> None:
        for name in self.names:
            self.subscribers[name] = {s for s in self.subscribers[name] if s[0] != node.index}
        for peer in self.links.pop(node.index, set()):
            if peer in self.links:
                self.links[peer].discard(node.index)
                self.relays[peer].link_gone(node.name, self.sim.sched.now)
                other = self.sim.nodes[peer]
                self.sim.sched.after(15.0, lambda other=other: self._fill_links(other) if other.online else None)
        for peer in self._used.pop(node.index, {}):
            self._used.get(peer, {}).pop(node.index, None)
        self.relays.pop(node.index, None)
        self._timers.pop(node.index, None)

    def _fill_links(self, node: SimNode) -> None:
        links, want, online = self.links[node.index], self.sim.scenario.inm_peers, self.sim.online
        for _ in range(4 * want):
            if len(links) >= want or len(online) < 2:
                break
            peer = self.sim.rng.choice(online)
            if peer is node or peer.index in links or peer.index not in self.links:
                continue
            links.add(peer.index)
            self.links[peer.index].add(node.index)
            now = self.sim.sched.now
            self._act(node, self.relays[node.index].link_up(peer.name, now))
            self._act(peer, self.relays[peer.index].link_up(node.name, now))

    # ---- clients ----

    def subscribe(self, node: SimNode, name: str) -> None:
        client = next(self._clients)
        self._subscribing[client] = name
        self._act(node, self.relays[node.index].subscribe(client, name, PUBLIC, "", self.sim.sched.now))

    def publish(self, name: str) -> None:
        candidates = [s for s in self.subscribers[name] if self.sim.nodes[s[0]].online]
        if not candidates:
            return
        node_index, client = self.sim.rng.choice(candidates)
        node, now = self.sim.nodes[node_index], self.sim.sched.now
        nonce = f"m{next(self._nonces)}"
        reason, actions = self.relays[node_index].publish(client, name, "x", nonce, now)
        if reason is not None:
            return
        expected = [s for s in candidates if s[1] != client]
        entry = {"t": now, "channel": name, "expected": len(expected), "latencies": [], "within_bound": 0,
                 "region": node.region}
        self.messages.append(entry)
        self._sent[nonce] = (entry, now)
        self._act(node, actions)

    # ---- carrying the relay's actions ----

    def _act(self, src: SimNode, actions: list[RelayAction]) -> None:
        sim = self.sim
        for action in actions:
            if type(action) is SendEnvelope:
                inm, size, links = action.inm, MESSAGE_BYTES if action.channel else CONTROL_BYTES, self.links[src.index]
                kind = inm.data.get("command", inm.type) if inm.type == "command" and isinstance(inm.data, dict) else inm.type
                self.envelopes[kind] += len(action.targets)
                for target in action.targets:
                    dst = sim.by_name.get(target)
                    if dst is not None and not dst.online:
                        self._lost(src, dst)
                    if dst is None or not dst.online or sim.cut(src, dst):
                        continue
                    delay = sim.net.delay(src.region, dst.region, size)
                    if dst.index not in links and not self._linked(src, dst):
                        if not self._link(src, dst):
                            self.no_link += 1
                            continue
                        dial = dst.index not in src.connections  # a stream over a connection, dialed first if none
                        delay += sim.connect_cost(src, dst)
                        if dial and not dst.public:
                            delay += RELAYED_DIAL_RTTS * sim.net.rtt(src.region, dst.region)
                    sim.sched.after(delay, lambda dst=dst, inm=inm: self._arrive(src, dst, inm))
            elif type(action) is Deliver:
                sent = self._sent.get(action.nonce)
                if sent is not None:
                    entry, latency = sent[0], sim.sched.now - sent[1]
                    entry["latencies"] += [latency] * len(action.clients)
                    if latency <= 2 * sim.net.rtt(entry["region"], src.region) + 0.1:
                        entry["within_bound"] += len(action.clients)
            elif type(action) is Answer:
                name = self._subscribing.pop(action.client, None)  # type: ignore[arg-type]
                if name is not None and action.reason is None and src.online:
                    self.subscribers[name].add((src.index, action.client))  # type: ignore[arg-type]
            elif type(action) is DhtGet:
                def found(done, get=action) -> None:
                    if src.online and src.index in self.relays:
                        self._act(src, get.then([value for _, value in done.result.values], sim.sched.now))
                sim.dht.query(src, lambda now, key=action.key: src.core.get_value(key, now), found)
            elif type(action) is DhtPut:
                def put(now: float, key=action.key, value=action.value):
                    try:
                        return src.core.put_value(key, value, now)
                    except RecordError:
                        return src.core.find_node(key, now)  # refused by its own store: nothing to store
                sim.dht.query(src, put, lambda done: None)
            elif type(action) is FindProviders:
                def providers(done, find=action) -> None:
                    if src.online and src.index in self.relays:
                        names = [peer_id_to_str(p.peer_id) for p in done.result.providers]
                        self._act(src, find.then(names, sim.sched.now))
                sim.dht.query(src, lambda now, key=action.key: src.core.get_providers(key, now), providers)
            elif type(action) is Provide:
                sim.dht.query(src, lambda now, key=action.key: src.core.provide(key, now), lambda done: None)
            elif type(action) is Unprovide:
                sim.dht.apply(src, src.core.unprovide(action.key, sim.sched.now))
            # ToClient (evictions) and AnswerLocally (stats commands nobody sends here): nothing to carry
        self._arm(src)

    def _live(self, node: int, peer: int, last: float) -> bool:
        """A link the node's adapter keeps open: used in the last LINK_IDLE seconds, or to a
        member of a channel open on the node (its stream protects the connection from pruning)."""
        if self.sim.sched.now - last <= LINK_IDLE:
            return True
        relay = self.relays.get(node)
        return relay is not None and relay.table.member_anywhere(self.sim.nodes[peer].name)

    def _has_link(self, src: SimNode, name: str) -> bool:
        """Whether src has a link up to the node `name` (the relay's `linked`)."""
        dst = self.sim.by_name.get(name)
        if dst is None:
            return False
        last = self._used.get(src.index, {}).get(dst.index)
        return dst.index in self.links[src.index] or (last is not None and self._live(src.index, dst.index, last))

    def _linked(self, src: SimNode, dst: SimNode) -> bool:
        """Whether src and dst have a link besides the neighbour graph (then it is used again
        now), as the node's adapter keeps one and closes it once idle."""
        now, used = self.sim.sched.now, self._used.get(src.index, {})
        last = used.get(dst.index)
        if last is None or not self._live(src.index, dst.index, last):
            return False
        used[dst.index] = self._used[dst.index][src.index] = now
        return True

    def _link(self, src: SimNode, dst: SimNode) -> bool:
        """Open a link between src and dst (both ends, as the node links back); an end with
        MAX_LINKS live links closes its least recently used one that is not a neighbour first,
        as the node's adapter does (`_room`)."""
        now = self.sim.sched.now
        for node in (src, dst):
            used = self._used.setdefault(node.index, {})
            for peer in [p for p, t in used.items() if not self._live(node.index, p, t)]:
                del used[peer]
            if len(used) + len(self.links.get(node.index, ())) >= MAX_LINKS:
                if not used:
                    return False
                oldest = min(used, key=used.__getitem__)
                del used[oldest]
                self._used.get(oldest, {}).pop(node.index, None)
                self.links_closed += 1
        self._used[src.index][dst.index] = self._used[dst.index][src.index] = now
        return True

    def _lost(self, src: SimNode, gone: SimNode) -> None:
        """An envelope to a node that left: the sender gives its link up a while later."""
        if (src.index, gone.index) in self._detecting:
            return
        self._detecting.add((src.index, gone.index))

        def give_up() -> None:
            self._detecting.discard((src.index, gone.index))
            relay = self.relays.get(src.index)
            if relay is not None and src.online and not gone.online:
                relay.link_gone(gone.name, self.sim.sched.now)

        self.sim.sched.after(LOSS_DETECTION, give_up)

    def _arm(self, node: SimNode) -> None:
        """Schedule the relay's next timer, if it is sooner than the one scheduled."""
        relay = self.relays.get(node.index)
        when = relay.next_timer() if relay is not None else None
        if when is None or self._timers.get(node.index, float("inf")) <= when:
            return
        self._timers[node.index] = when
        self.sim.sched.at(max(when, self.sim.sched.now), lambda: self._fire(node, when))

    def _fire(self, node: SimNode, when: float) -> None:
        if self._timers.get(node.index) != when:
            return  # superseded, or the node left
        del self._timers[node.index]
        relay = self.relays.get(node.index)
        if relay is not None and node.online:
            self._act(node, relay.tick(self.sim.sched.now))

    def _arrive(self, src: SimNode, dst: SimNode, inm: Inm) -> None:
        relay = self.relays.get(dst.index)
        if relay is not None and dst.online:
            if inm.type == "message" and relay.table.secret(inm.data.get("channel", "")) is None:
                self.non_member_messages += 1
            actions = relay.receive(inm, src.name, self.sim.sched.now)
            if actions:  # most envelopes of a flood are duplicates, with nothing to do
                self._act(dst, actions)
