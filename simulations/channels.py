"""The channel relay (WSRelay) in the simulator: each node runs the node's own relay core
(`overlay/channels/relay.py`: commands, onboarding, announcements, channel messages), and this
module only carries its envelopes over simulated links, as the node's adapter carries them over
INM streams.

- Every node keeps up to `inm_peers` neighbours (links both ways), replaced when one leaves; a
  new link is `link_up` on both sides, which onboards with list-channels.
- Envelopes to a neighbour take the one-way delay; a unicast to another node (a channel message,
  a command's response) is sent straight to it, paying a connection setup first (and, behind
  NAT, a relayed dial) when the two are not connected. The node would make that node a
  neighbour too (up to its `max_links`); the simulator keeps the neighbour graph at `inm_peers`.
- Subscriptions, publishes and the REFRESH timer are the relay's events; its DHT lookups and puts
  (reservations) run on the node's own Kademlia core over the simulated links.
What is measured: for each message, the subscribers online on nodes where the channel was open
when it was sent, and which of them got it, when.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING

from overlay.channels.inm import Inm
from overlay.channels.relay import Answer, ChannelRelay, Deliver, DhtGet, DhtPut, RelayAction, SendEnvelope
from overlay.channels.reservation import Reservation
from overlay.channels.sealing import PUBLIC
from overlay.channels.table import REFRESH
from overlay.core.errors import RecordError

if TYPE_CHECKING:
    from simulations.network import SimNode, Simulation

RELAYED_DIAL_RTTS = 4  # lookup and relay setup before a first unicast to a node behind NAT
CONTROL_BYTES = 200  # an envelope's size on the wire, for the link model
MESSAGE_BYTES = 300


def _modelled_signature(inm: Inm) -> str:
    return "modelled"


def _honest(signed: object) -> bool:
    """Simulated nodes are honest: every signed envelope and reservation is authentic. The
    rules around signatures (who must sign, skew, replay, first come) run as on the node; the
    Ed25519 work itself is not modelled (its cost is the node's, in benchmarks)."""
    return True


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

    def _wall_ms(self) -> int:
        return int(self.sim.sched.now * 1000)

    # ---- nodes ----

    def joined(self, node: SimNode) -> None:
        self.relays[node.index] = ChannelRelay(node.name, self._wall_ms, _modelled_signature, _honest,
                                               _modelled_reservation, _honest)
        self.links[node.index] = set()
        self._fill_links(node)
        self.sim.sched.after(REFRESH * (0.8 + 0.2 * self.sim.rng.random()), lambda: self._refresh(node))

    def left(self, node: SimNode) -> None:
        for name in self.names:
            self.subscribers[name] = {s for s in self.subscribers[name] if s[0] != node.index}
        for peer in self.links.pop(node.index, set()):
            if peer in self.links:
                self.links[peer].discard(node.index)
                self.relays[peer].link_gone(node.name)
                other = self.sim.nodes[peer]
                self.sim.sched.after(15.0, lambda other=other: self._fill_links(other) if other.online else None)
        self.relays.pop(node.index, None)

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
        entry = {"t": now, "channel": name, "expected": len(expected), "latencies": []}
        self.messages.append(entry)
        self._sent[nonce] = (entry, now)
        self._act(node, actions)

    # ---- carrying the relay's actions ----

    def _act(self, src: SimNode, actions: list[RelayAction]) -> None:
        sim = self.sim
        for action in actions:
            if type(action) is SendEnvelope:
                inm, size, links = action.inm, MESSAGE_BYTES if action.channel else CONTROL_BYTES, self.links[src.index]
                for target in action.targets:
                    dst = sim.by_name.get(target)
                    if dst is None or not dst.online or sim.cut(src, dst):
                        continue
                    delay = sim.net.delay(src.region, dst.region, size)
                    if dst.index not in links and dst.index not in src.connections:  # not linked: dial first
                        delay += sim.connect_cost(src, dst)
                        if not dst.public:
                            delay += RELAYED_DIAL_RTTS * sim.net.rtt(src.region, dst.region)
                    sim.sched.after(delay, lambda dst=dst, inm=inm: self._arrive(src, dst, inm))
            elif type(action) is Deliver:
                sent = self._sent.get(action.nonce)
                if sent is not None:
                    sent[0]["latencies"] += [sim.sched.now - sent[1]] * len(action.clients)
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
            # ToClient (evictions) and AnswerLocally (stats commands nobody sends here): nothing to carry

    def _arrive(self, src: SimNode, dst: SimNode, inm: Inm) -> None:
        relay = self.relays.get(dst.index)
        if relay is not None and dst.online:
            actions = relay.receive(inm, src.name, self.sim.sched.now)
            if actions:  # most envelopes of a flood are duplicates, with nothing to do
                self._act(dst, actions)

    def _refresh(self, node: SimNode) -> None:
        relay = self.relays.get(node.index)
        if relay is None or not node.online:
            return
        now = self.sim.sched.now
        self._act(node, relay.tick(now) + relay.refresh(now))
        self.sim.sched.after(REFRESH * (0.8 + 0.2 * self.sim.rng.random()), lambda: self._refresh(node))
